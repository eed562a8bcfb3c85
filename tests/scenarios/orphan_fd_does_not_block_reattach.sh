#!/bin/sh
# Proves: a server that dies while a child it forked (no exec) still holds
# its server fd does not keep the queue: a new server attaches at once and
# gets the READ the dead one held, and the reader gets the new server's
# data (vmkit orphan exits 0 only then). Before, the attach failed with
# EBUSY until the child exited.
# group: main
# timeout: 120
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
check "vmkit orphan" "$VMKIT" orphan
