#!/bin/sh
# Proves: a server that holds a fetched READ past its timeout cannot hand
# that READ's bytes to the next request given the same tag (depth 1): its
# late answer is refused, and the second reader gets its own block or an
# error, never the first block's bytes (vmkit late-answer exits 0 only then).
# group: main
# timeout: 120
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
check "vmkit late-answer --timeout-ms 2000" "$VMKIT" late-answer --timeout-ms 2000
