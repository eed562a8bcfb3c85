#!/bin/sh
# Proves: a graceful destroy writes back the page cache of every partition,
# not only the whole disk's. 8 MiB written through /dev/usrbd0p1 (buffered,
# kept dirty by a plain opener of the partition, as a USB gadget LUN would
# hold it), then `usrbd destroy`: the backing file holds those 8 MiB at the
# partition's offset. Before the fix only part0 was synced and the kernel
# logged "lost async page write" for the partition's pages.
# group: main
# timeout: 180
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
img=$USRBD_TMP/backing.img
start_server usrbd0 --size 64MiB --backend file --file "$img"
srv=$SERVER_PID
one_partition usrbd0
sleep 600 </dev/usrbd0p1 &
holder=$!
track $holder
dd if=/dev/urandom of="$USRBD_TMP/pattern" bs=1M count=8 status=none
check "8 MiB buffered to /dev/usrbd0p1" dd if="$USRBD_TMP/pattern" of=/dev/usrbd0p1 bs=1M status=none
dirty=$(awk '/^Dirty:/ {print $2}' /proc/meminfo)
log "dirty before destroy: $dirty kB"
check "usrbd destroy --name usrbd0 (graceful)" "$USRBD" destroy --name usrbd0
kill -KILL $holder 2>/dev/null || true
check_gone usrbd0
dd if="$img" of="$USRBD_TMP/readback" bs=1M skip=1 count=8 status=none
check "the partition's 8 MiB are in the backing file" cmp "$USRBD_TMP/pattern" "$USRBD_TMP/readback"
kill -KILL "$srv" 2>/dev/null || true
