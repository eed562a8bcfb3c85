#!/bin/sh
# Proves: a RAM-backed device keeps serving while memory runs out, with no
# deadlock and no lost acknowledged write. Each round, with vmkit ackwrite
# (O_DIRECT + fdatasync) on one half and fio buffered writes (dirty page
# cache that reclaim must write back through the server) on 16 MiB of the
# other:
# (1) a tmpfs hog pins all memory but 128 MiB for a while; (2) a process
# allocates until the OOM killer takes it, and it must be the one taken (it
# gets no oom_score_adj of its own: the service protects itself). Then fio
# verifies its half with O_DIRECT reads, and the RAM image saved at detach
# holds every acknowledged write.
# CI: 1 round; soak: 5.
# group: rel
# order: 40
# timeout: 360
# soak-timeout: 1500
set -eu
. "$USRBD_TESTS/lib.sh"

rounds=$(soak_or 1 5)
img=$USRBD_TMP/ram.img
ack=$USRBD_TMP/ack.log
hog=$USRBD_TMP/hog

mem_available_kib() { awk '$1 == "MemAvailable:" { print $2 }' /proc/meminfo; }
oom_kills() { awk '$1 == "oom_kill" { print $2 }' /proc/vmstat; }

# fio_half MODE: buffered random writes of the second half (write), or an
# O_DIRECT read-back of what they wrote (verify); same job, same seed.
fio_half() {
	if [ "$1" = write ]; then
		extra="--direct=0 --end_fsync=1 --do_verify=0"
	else
		extra="--direct=1 --verify_only=1"
	fi
	# shellcheck disable=SC2086
	fio --name=half --filename=/dev/usrbd0 --offset=32M --size=16M --bs=4k \
		--rw=randwrite --ioengine=psync --verify=crc32c --verify_fatal=1 \
		--randseed=$round $extra >"$USRBD_TMP/fio-$1.out" 2>&1
}

load_module
start_server usrbd0 --size 64MiB --backend ram --image "$img"
srv=$SERVER_PID
mkdir -p "$hog"
t0=$(date +%s)
min_avail=$(mem_available_kib)
hog_max_mib=0
oom0=$(oom_kills)
round=0
while [ $round -lt $rounds ]; do
	round=$((round + 1))
	ackwrite_start /dev/usrbd0 "$ack" $((32 * 1024 * 1024))
	fio_half write &
	writer=$!
	track $writer

	# (1) Pin memory in a tmpfs (no swap: nothing can push it out).
	avail=$(mem_available_kib)
	fill_mib=$((avail / 1024 - 128))
	[ $fill_mib -gt $hog_max_mib ] && hog_max_mib=$fill_mib
	mount -t tmpfs -o size=$((fill_mib + 1))m hog "$hog"
	LIB_MOUNTS="$hog $LIB_MOUNTS"
	dd if=/dev/zero of="$hog/fill" bs=1M count=$fill_mib status=none ||
		log "round $round: the tmpfs hog stopped early"
	log "round $round, t+$(($(date +%s) - t0))s: tmpfs hog holds $(du -m "$hog/fill" | cut -f1) MiB, MemAvailable $(mem_available_kib) KiB"
	end=$(($(date +%s) + $(soak_or 3 30)))
	while [ "$(date +%s)" -lt $end ]; do
		a=$(mem_available_kib)
		[ "$a" -lt "$min_avail" ] && min_avail=$a
		running $ACK_PID || {
			cat "$USRBD_TMP/ackwrite.out"
			fail "round $round: ackwrite stopped under memory pressure"
		}
		sleep 1
	done
	rm -f "$hog/fill"
	umount "$hog"

	# (2) Allocate until the OOM killer steps in; it must pick the hog.
	oom_before=$(oom_kills)
	start_allocator
	py=$ALLOC_PID
	log "round $round, t+$(($(date +%s) - t0))s: allocating until the OOM killer acts"
	wait_until 180 "the allocating hog to be OOM-killed" not_running $py
	rc=0
	wait $py || rc=$?
	[ "$(oom_kills)" -gt "$oom_before" ] || fail "round $round: the hog ended (exit $rc) without an OOM kill"
	dmesg | grep -q "Killed process $py " || {
		dmesg | grep -i 'killed process' | tail -n 5
		fail "round $round: the OOM killer did not pick the hog (pid $py)"
	}
	check "round $round: server alive after the OOM kill" running $srv
	log "round $round, t+$(($(date +%s) - t0))s: hog OOM-killed; waiting for the writers"

	wait_until 300 "fio buffered writes to finish" not_running $writer
	wrc=0
	wait $writer || wrc=$?
	[ $wrc -eq 0 ] || {
		cat "$USRBD_TMP/fio-write.out"
		fail "round $round: fio buffered writes failed (exit $wrc)"
	}
	ackwrite_stop
	[ "$ACK_RC" -eq 0 ] || {
		cat "$USRBD_TMP/ackwrite.out"
		fail "round $round: ackwrite stopped with an I/O error"
	}
	fio_half verify || {
		cat "$USRBD_TMP/fio-verify.out"
		fail "round $round: fio verify of the buffered half failed"
	}
	log "round $round, t+$(($(date +%s) - t0))s: ok; $(acked_count "$ack") writes acknowledged so far"
done
check_no_d_state
stop_server $srv
ackcheck_image "$img" "$ack"
figures rounds=$rounds hog_max_mib=$hog_max_mib min_mem_available_kib=$min_avail \
	oom_kills=$(($(oom_kills) - oom0)) acked="$(acked_count "$ack")" \
	blocks_verified=$ACK_CHECKED missing=0 fio_verified_mib=$((rounds * 16)) \
	seconds=$(($(date +%s) - t0))
