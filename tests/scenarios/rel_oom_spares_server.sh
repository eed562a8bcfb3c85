#!/bin/sh
# Proves: the service protects itself from the OOM killer without help from
# its init (no systemd OOMScoreAdjust here, as under busybox init): a RAM
# server holding 320 MiB of written data, the largest process on the
# machine, survives an ordinary process (oom_score_adj 0, ~200 MiB) that
# allocates until the OOM killer acts; the hog is the one killed and the
# device's data reads back intact. CI and soak: the same.
# group: rel
# order: 45
# timeout: 420
# soak-timeout: 600
set -eu
. "$USRBD_TESTS/lib.sh"

mem_available_kib() { awk '$1 == "MemAvailable:" { print $2 }' /proc/meminfo; }
hog=$USRBD_TMP/hog
t0=$(date +%s)
load_module
start_server usrbd0 --size 384MiB --backend ram
srv=$SERVER_PID
log "server oom_score_adj: $(cat /proc/$srv/oom_score_adj)"
dd if=/dev/urandom of="$USRBD_TMP/chunk" bs=1M count=32 status=none
i=0
while [ $i -lt 10 ]; do
	dd if="$USRBD_TMP/chunk" of=/dev/usrbd0 bs=1M seek=$((i * 32)) oflag=direct status=none ||
		fail "writing 32 MiB at $((i * 32)) MiB"
	i=$((i + 1))
done
rss_mib=$(($(awk '$1 == "VmRSS:" { print $2 }' /proc/$srv/status) / 1024))
log "server VmRSS ${rss_mib} MiB after 320 MiB written"
rm -f "$USRBD_TMP/chunk"
# Pin all memory but ~200 MiB in a tmpfs (no process owns it), so the hog
# tops out smaller than the server.
mkdir -p "$hog"
fill_mib=$(($(mem_available_kib) / 1024 - 200))
mount -t tmpfs -o size=$((fill_mib + 1))m hog "$hog"
LIB_MOUNTS="$hog $LIB_MOUNTS"
dd if=/dev/zero of="$hog/fill" bs=1M count=$fill_mib status=none || log "the tmpfs stopped early"
start_allocator
py=$ALLOC_PID
wait_until 180 "the allocating process to end" not_running $py
dmesg | grep -i 'killed process' | tail -n 3
running $srv || fail "the OOM killer took the server (VmRSS ${rss_mib} MiB) instead of the allocating process"
dmesg | grep -q "Killed process $py " || fail "the allocating process (pid $py) ended without being OOM-killed"
rm -f "$hog/fill"
umount "$hog"
dd if=/dev/usrbd0 of="$USRBD_TMP/back" bs=1M count=32 skip=288 iflag=direct status=none
dd if=/dev/usrbd0 of="$USRBD_TMP/first" bs=1M count=32 iflag=direct status=none
check "the data reads back intact" cmp "$USRBD_TMP/first" "$USRBD_TMP/back"
stop_server $srv
figures server_rss_mib=$rss_mib pinned_mib=$fill_mib killed=hog seconds=$(($(date +%s) - t0))
