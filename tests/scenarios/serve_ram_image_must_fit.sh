#!/bin/sh
# Proves: `usrbd serve` of a RAM device whose image could not be saved (its
# filesystem has less free space than the device size) refuses to start
# with an error naming the free space, and creates no device.
# group: main
# timeout: 120
set -eu
. "$USRBD_TESTS/lib.sh"

small=$USRBD_TMP/small
mkdir -p "$small"
mount -t tmpfs -o size=32m small "$small"
LIB_MOUNTS="$small $LIB_MOUNTS"
load_module
rc=0
timeout 60 "$USRBD" serve --name usrbd0 --size 64MiB --backend ram --image "$small/ram.img" \
	>"$USRBD_TMP/serve.log" 2>&1 || rc=$?
cat "$USRBD_TMP/serve.log"
[ $rc -ne 124 ] || fail "serve of a 64 MiB RAM device with 32 MiB for its image kept running"
[ $rc -ne 0 ] || fail "serve exited 0"
grep -q 'free' "$USRBD_TMP/serve.log" || fail "the error does not mention the free space"
listed usrbd0 && fail "a device was created"
log "ok: refused with exit $rc"
