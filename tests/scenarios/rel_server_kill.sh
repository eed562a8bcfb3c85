#!/bin/sh
# Proves: SIGKILL of the server at a random moment while vmkit ackwrite
# (write + fdatasync, logged once acknowledged) and fio write to a
# file-backed device leaves no hung task and no kernel warning; a new
# `usrbd serve` of the same file and name re-attaches to the device the dead
# server left (every fifth cycle instead: the writers must fail within the
# request timeout, then `usrbd destroy --force` removes the device and serve
# creates it again); after every cycle each acknowledged write is in the
# backing file. CI: 10 cycles; soak: 50.
# group: rel
# order: 10
# timeout: 420
# soak-timeout: 1800
set -eu
. "$USRBD_TESTS/lib.sh"

cycles=$(soak_or 10 50)
timeout_ms=5000
img=$USRBD_TMP/backing.img
ack=$USRBD_TMP/ack.log
serve() {
	start_server usrbd0 --size 32MiB --backend file --file "$img" --queues 2 \
		--timeout-ms $timeout_ms
}

load_module
serve
t0=$(date +%s)
reattached=0
recreated=0
writer_errors=0
checked=0
i=0
while [ $i -lt $cycles ]; do
	i=$((i + 1))
	# ackwrite owns the first half, fio keeps the queues full in the second.
	# --thread: one process, so the SIGKILL below stops the writes too (a
	# forked fio job would outlive its parent and keep writing).
	ackwrite_start /dev/usrbd0 "$ack" $((16 * 1024 * 1024))
	fio --name=load --thread --filename=/dev/usrbd0 --rw=randwrite --bs=4k --iodepth=16 \
		--ioengine=libaio --direct=1 --offset=16M --size=16M --time_based \
		--runtime=600 >"$USRBD_TMP/fio.out" 2>&1 &
	fio=$!
	track $fio
	acked0="$(acked_count "$ack")"
	sleep_ms "$(rand_between 300 2000)"
	running $ACK_PID || {
		cat "$USRBD_TMP/ackwrite.out"
		fail "cycle $i: ackwrite stopped before the kill"
	}
	kill -KILL "$SERVER_PID"
	wait_until 30 "the killed server to exit" not_running "$SERVER_PID"
	wait "$SERVER_PID" 2>/dev/null || true
	[ -e /sys/block/usrbd0 ] || fail "cycle $i: the device went away with its server"
	if [ $((i % 5)) -eq 0 ]; then
		# No server: queued and held requests must fail within the timeout.
		wait_until $((timeout_ms / 1000 + 25)) "ackwrite to fail with no server" not_running "$ACK_PID"
		wait_until $((timeout_ms / 1000 + 25)) "fio to fail with no server" not_running $fio
		check_no_d_state
		check "cycle $i: usrbd destroy --force" "$USRBD" destroy --force --name usrbd0
		wait_until 30 "/sys/block/usrbd0 gone" test ! -e /sys/block/usrbd0
		serve
		grep -q 're-attaching' "$USRBD_TMP/server-usrbd0.log" &&
			fail "cycle $i: serve re-attached to a destroyed device"
		recreated=$((recreated + 1))
	else
		serve
		grep -q 're-attaching to existing device usrbd0' "$USRBD_TMP/server-usrbd0.log" ||
			fail "cycle $i: the new server did not re-attach (see its log)"
		reattached=$((reattached + 1))
	fi
	ackwrite_stop
	[ "$ACK_RC" -eq 0 ] || writer_errors=$((writer_errors + 1))
	kill -KILL $fio 2>/dev/null || true
	wait $fio 2>/dev/null || true
	ackcheck_image "$img" "$ack"
	checked=$((checked + ACK_CHECKED))
	log "cycle $i, t+$(($(date +%s) - t0))s: $(($(acked_count "$ack") - acked0)) writes acknowledged, $ACK_CHECKED blocks verified"
done
# The last server serves reads and writes (outside ackwrite's half).
dd if=/dev/urandom of="$USRBD_TMP/pattern" bs=1M count=4 status=none
check "write 4 MiB at 16 MiB" dd if="$USRBD_TMP/pattern" of=/dev/usrbd0 bs=1M seek=16 oflag=direct conv=fsync status=none
dd if=/dev/usrbd0 of="$USRBD_TMP/readback" bs=1M skip=16 count=4 iflag=direct status=none
check "4 MiB read back identical" cmp "$USRBD_TMP/pattern" "$USRBD_TMP/readback"
stop_server "$SERVER_PID"
ackcheck_image "$img" "$ack"
check_no_d_state
figures cycles=$cycles reattached=$reattached recreated=$recreated \
	acked="$(acked_count "$ack")" blocks_verified=$checked missing=0 \
	writer_io_errors=$writer_errors seconds=$(($(date +%s) - t0))
