#!/bin/sh
# Proves: a server whose buffer can never be faulted in (userfaultfd, no
# handler) cannot make the module hold a request forever. The READ whose
# answer cannot be copied and the WRITE that cannot be handed over fail
# within the request timeout (3 s here), the device counts the timeouts,
# and a forced destroy returns while the server thread is still stuck in
# SERVE; the runner then fails on any hung task or warning in the log.
# group: main
# timeout: 120
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
check "vmkit stall --timeout-ms 3000" "$VMKIT" stall --timeout-ms 3000
