#!/bin/sh
# Proves: copies into the server's pages are fork-safe (issue 14 item 3): a
# server that forks children again and again while it serves (fork makes
# its buffer copy-on-write, its next writes split the pages) never loses a
# copy to a child's page and never gets EFAULT: eight checkers write
# generation-stamped blocks and read them back for 20 s, 0 wrong blocks;
# then the same with two queues attached linear to one image (the RAM
# backend's way) and 512-byte sectors, so both queues' copies land in the
# same pages. Before the fix in usrbd_fetch() the server's SERVE failed
# with EFAULT after a fork (8 fault-ins per call, one used per request
# whose slot the fork had write-protected): 24 requests served, then every
# checker's I/O timed out. And a child holding the
# inherited server fd cannot serve: its SERVE with the answer (tag and
# cookie) of a request the parent holds, and its fetch, fail with EPERM,
# and the parent's own answer still completes the request. vmkit forked
# exits 0 only then.
# group: main
# timeout: 180
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
check "vmkit forked --seconds 20" "$VMKIT" forked --seconds 20
check "vmkit forked --seconds 20 --linear" "$VMKIT" forked --seconds 20 --linear
