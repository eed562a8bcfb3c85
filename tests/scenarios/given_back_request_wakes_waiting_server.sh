#!/bin/sh
# Proves: a request the module gives back to its queue reaches a server
# thread already asleep in SERVE without any new request arriving (issue
# 14 item 7): a WRITE taken by a SERVE that then fails with EFAULT (its
# request array is unwritable) is fetched by the sleeping sibling at once,
# not when that sibling's 10 s wait runs out; and a held request that
# times out wakes the sibling asleep without a time limit with ENOTCONN.
# vmkit wake exits 0 only then. Without the wake_up() in usrbd_requeue()
# the first part stalls 10 s in some rounds (9 of 18 give-backs in 100
# rounds) and without the wake_up_all() of the timeout's unbind the
# sibling is never woken.
# group: main
# timeout: 240
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
check "vmkit wake --rounds 100" "$VMKIT" wake --rounds 100
