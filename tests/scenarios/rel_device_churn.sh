#!/bin/sh
# Proves: creating, serving (256 KiB written and verified by fio through
# each) and destroying 16 devices at a time, cycle after cycle, leaks
# nothing: after a warm-up cycle, kernel
# slab memory (the /proc/slabinfo total of active objects and the
# per-device bdev_cache objects, caches dropped) comes back to where it
# was, and the module unloads cleanly at the end. Half the devices go by
# SIGTERM (graceful detach), half by SIGKILL of the server followed by
# `usrbd destroy --force`. CI: 10 cycles; soak: 200.
# Tolerance: the slab total may grow by at most 1 MiB plus 1 KiB per device
# created, and bdev_cache must hold no more objects than after the warm-up.
# group: rel
# order: 70
# timeout: 480
# soak-timeout: 3600
set -eu
. "$USRBD_TESTS/lib.sh"

cycles=$(soak_or 10 200)
ndev=16
io_kib=256

# SLUB counts objects freed into a per-CPU slab as active until that slab
# is flushed: shrink the caches so /proc/slabinfo counts what is in use.
shrink_slabs() {
	for f in /sys/kernel/slab/*/shrink; do
		echo 1 >"$f" 2>/dev/null || true
	done
}

# slab_kib: KiB in active slab objects, after dropping reclaimable caches.
slab_kib() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
	sleep 1
	shrink_slabs
	awk 'NR > 2 { t += $2 * $4 } END { printf "%d", t / 1024 }' /proc/slabinfo
}
slab_objs() { awk -v c="$1" '$1 == c { print $2 }' /proc/slabinfo; }

# bdev_settled WANT: the bdev_cache count, once it is at most WANT or after
# 10 s: the last disk references (a killed server's fds, a udev probe) can
# be dropped a moment after the device is gone; a leaked one never is.
bdev_settled() {
	i=0
	while :; do
		n=$(slab_objs bdev_cache)
		if [ "$n" -le "$1" ] || [ $i -ge 10 ]; then
			echo "$n"
			return
		fi
		i=$((i + 1))
		echo 3 >/proc/sys/vm/drop_caches
		shrink_slabs
		sleep 1
	done
}

# count_logs PATTERN: how many server logs hold PATTERN (one process).
count_logs() { grep -l "$1" "$USRBD_TMP"/serve-*.log 2>/dev/null | wc -l; }
all_serving() { [ "$(count_logs 'usrbd: serving /dev/')" -eq $ndev ]; }
none_left() {
	for d in /sys/block/usrbd*; do
		[ -e "$d" ] && return 1
	done
	return 0
}

# one_cycle: 16 servers up, I/O through each, all torn down. Few processes
# per step: in TCG every fork+exec costs.
one_cycle() {
	rm -f "$USRBD_TMP"/serve-*.log
	pids=""
	jobs=""
	i=0
	while [ $i -lt $ndev ]; do
		"$USRBD" serve --name "usrbd$i" --size 8MiB --backend ram --depth 8 \
			--max-io 64KiB --timeout-ms 5000 >"$USRBD_TMP/serve-$i.log" 2>&1 &
		pids="$pids $!"
		track $!
		jobs="$jobs --name=d$i --filename=/dev/usrbd$i --offset=$(rand_between 0 7)m"
		i=$((i + 1))
	done
	wait_until 120 "$ndev servers serving" all_serving
	# One fio, one job per device: 256 KiB written, then read back and
	# checked (crc32c) through O_DIRECT.
	# shellcheck disable=SC2086 # one job per device
	fio --ioengine=psync --direct=1 --rw=write --bs=64k --size=${io_kib}k \
		--verify=crc32c --do_verify=1 --verify_fatal=1 $jobs \
		>"$USRBD_TMP/fio.out" 2>&1 || {
		cat "$USRBD_TMP/fio.out"
		fail "fio write/verify on the $ndev devices"
	}
	i=0
	for p in $pids; do
		if [ $((i % 2)) -eq 0 ]; then
			kill -TERM "$p"
		else
			kill -KILL "$p"
		fi
		i=$((i + 1))
	done
	i=0
	for p in $pids; do
		rc=0
		wait "$p" || rc=$?
		if [ $((i % 2)) -eq 0 ]; then
			[ $rc -eq 0 ] || fail "server of usrbd$i exited $rc after SIGTERM: $(tail -n 3 "$USRBD_TMP/serve-$i.log")"
		else
			"$USRBD" destroy --force --name "usrbd$i" >/dev/null ||
				fail "usrbd destroy --force --name usrbd$i"
		fi
		i=$((i + 1))
	done
	wait_until 60 "every usrbd device gone" none_left
	# shellcheck disable=SC2034 # lib.sh reads it at exit
	LIB_PIDS=""
}

t0=$(date +%s)
slab_unloaded=$(slab_kib)
load_module
one_cycle
slab_warm=$(slab_kib)
bdev_warm=$(slab_objs bdev_cache)
log "after the warm-up cycle: slab ${slab_warm} KiB, bdev_cache ${bdev_warm} objects"
c=1
while [ $c -lt $cycles ]; do
	c=$((c + 1))
	one_cycle
	[ $((c % 10)) -eq 0 ] && log "cycle $c: slab $(slab_kib) KiB, bdev_cache $(slab_objs bdev_cache) objects"
done
slab_end=$(slab_kib)
bdev_end=$(bdev_settled "$bdev_warm")
devices=$((cycles * ndev))
tolerance=$((1024 + devices))
log "after $cycles cycles ($devices devices): slab ${slab_end} KiB (warm-up ${slab_warm}), bdev_cache ${bdev_end} (warm-up ${bdev_warm})"
[ "$bdev_end" -le "$bdev_warm" ] || fail "bdev_cache grew from $bdev_warm to $bdev_end objects"
[ $((slab_end - slab_warm)) -le $tolerance ] ||
	fail "slab grew by $((slab_end - slab_warm)) KiB over $devices devices (tolerance $tolerance KiB)"
check "rmmod usrbd" rmmod usrbd
slab_after=$(slab_kib)
log "slab before insmod ${slab_unloaded} KiB, after rmmod ${slab_after} KiB"
[ $((slab_after - slab_unloaded)) -le $tolerance ] ||
	fail "after rmmod, slab is $((slab_after - slab_unloaded)) KiB above its level before insmod (tolerance $tolerance KiB)"
figures cycles=$cycles devices=$devices io_checked_kib=$((devices * io_kib)) errors=0 \
	slab_growth_kib=$((slab_end - slab_warm)) slab_after_rmmod_kib=$((slab_after - slab_unloaded)) \
	tolerance_kib=$tolerance bdev_cache_growth=$((bdev_end - bdev_warm)) \
	seconds=$(($(date +%s) - t0))
