#!/bin/sh
# Proves: copies into the server's pages are fork-safe (issue 14 item 3): a
# server that forks children again and again while it serves (fork makes
# its buffer copy-on-write, its next writes split the pages) never loses a
# copy to a child's page: two checkers write generation-stamped blocks and
# read them back for 30 s, 0 wrong blocks. And a child holding the
# inherited server fd cannot serve: its SERVE with the answer (tag and
# cookie) of a request the parent holds, and its fetch, fail with EPERM,
# and the parent's own answer still completes the request. vmkit forked
# exits 0 only then.
# group: main
# timeout: 180
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
check "vmkit forked --seconds 30" "$VMKIT" forked --seconds 30
