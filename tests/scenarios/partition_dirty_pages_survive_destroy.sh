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
# An MBR with one Linux partition from sector 2048 (1 MiB) to the end.
printf '\203' >"$USRBD_TMP/type"
{
	dd if=/dev/zero bs=446 count=1 status=none
	printf '\000\000\000\000'
	cat "$USRBD_TMP/type"
	printf '\000\000\000\000\010\000\000\000\370\001\000'
	dd if=/dev/zero bs=48 count=1 status=none
	printf '\125\252'
} >"$USRBD_TMP/mbr"
check "write the partition table" dd if="$USRBD_TMP/mbr" of=/dev/usrbd0 bs=512 count=1 oflag=direct conv=fsync status=none
check "re-read the partition table" blockdev --rereadpt /dev/usrbd0
wait_until 10 "/dev/usrbd0p1" test -b /dev/usrbd0p1
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
