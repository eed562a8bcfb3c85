#!/bin/sh
# Proves (recovery): with ext4 mounted on a file-backed device and a writer
# appending durably (write + fdatasync, vmkit ackwrite), kill -9 of the
# server and a new `usrbd serve` re-attaching to the device lose nothing:
# the requests the dead server held are queued again for the new one, so
# the writer sees 0 I/O errors, the kernel logs no ext4 or I/O error, and
# every acknowledged block is in the file afterwards (ackcheck, 0 lost).
# CI: 20 cycles; soak: 200.
# group: rel
# order: 15
# timeout: 900
# soak-timeout: 7200
set -eu
. "$USRBD_TESTS/lib.sh"

cycles=$(soak_or 20 200)
img=$USRBD_TMP/backing.img
ack=$USRBD_TMP/ack.log
mnt=$USRBD_TMP/mnt
# The request timeout leaves the new server ample time to attach.
serve() {
	start_server usrbd0 --size 64MiB --backend file --file "$img" --queues 2 \
		--timeout-ms 30000
}

load_module
serve
check "mkfs.ext4" mkfs.ext4 -q -F /dev/usrbd0
mount_dev /dev/usrbd0 "$mnt"
check "8 MiB data file" dd if=/dev/zero of="$mnt/data" bs=1M count=8 conv=fsync status=none
dmesg_from=$(($(dmesg | wc -l) + 1))
ackwrite_start "$mnt/data" "$ack" $((8 * 1024 * 1024))
t0=$(date +%s)
i=0
while [ $i -lt "$cycles" ]; do
	i=$((i + 1))
	sleep_ms "$(rand_between 300 1500)"
	running "$ACK_PID" || {
		cat "$USRBD_TMP/ackwrite.out"
		fail "cycle $i: the writer stopped before the kill"
	}
	kill -KILL "$SERVER_PID"
	wait_until 30 "the killed server to exit" not_running "$SERVER_PID"
	wait "$SERVER_PID" 2>/dev/null || true
	serve
	grep -q 're-attaching to existing device usrbd0' "$USRBD_TMP/server-usrbd0.log" ||
		fail "cycle $i: the new server did not re-attach (see its log)"
	log "cycle $i, t+$(($(date +%s) - t0))s: $(acked_count "$ack") writes acknowledged so far"
done
sleep 1
running "$ACK_PID" || {
	cat "$USRBD_TMP/ackwrite.out"
	fail "the writer stopped (an I/O error reached it)"
}
ackwrite_stop
cat "$USRBD_TMP/ackwrite.out"
[ "$ACK_RC" -eq 0 ] || fail "the writer saw an I/O error (exit $ACK_RC)"
check "umount" umount "$mnt"
errors=$(dmesg | tail -n +"$dmesg_from" | grep -E 'EXT4-fs (error|warning)|I/O error|Buffer I/O' || true)
if [ -n "$errors" ]; then
	echo "$errors"
	fail "the kernel logged errors while the server was killed"
fi
log "ok: no ext4 or I/O error in dmesg"
stop_server "$SERVER_PID"
check "e2fsck -fn clean" e2fsck -fn "$img"
mount_dev "$img" "$USRBD_TMP/image" -o ro,loop
ackcheck_image "$USRBD_TMP/image/data" "$ack"
umount "$USRBD_TMP/image"
figures cycles="$cycles" acked="$(acked_count "$ack")" blocks_verified="$ACK_CHECKED" \
	lost=0 writer_io_errors=0 seconds=$(($(date +%s) - t0))
