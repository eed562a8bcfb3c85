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
	ackwrite_alive "cycle $i: the writer stopped before the kill"
	kill -KILL "$SERVER_PID"
	wait_until 30 "the killed server to exit" not_running "$SERVER_PID"
	wait "$SERVER_PID" 2>/dev/null || true
	serve
	grep -q 're-attaching to existing device usrbd0' "$USRBD_TMP/server-usrbd0.log" ||
		fail "cycle $i: the new server did not re-attach (see its log)"
	log "cycle $i, t+$(($(date +%s) - t0))s: $(acked_count "$ack") writes acknowledged so far"
done
ackwrite_finish_ext4 "$mnt" "$dmesg_from" "while the server was killed"
stop_server "$SERVER_PID"
ext4_image_ackcheck "$img" data "$ack"
figures cycles="$cycles" acked="$(acked_count "$ack")" blocks_verified="$ACK_CHECKED" \
	lost=0 writer_io_errors=0 seconds=$(($(date +%s) - t0))
