#!/bin/sh
# Proves: a detach whose graceful destroy hits the module's drain deadline
# (a READ stuck 10 s in a dm-delay backing device, deadline 2 s: the module
# fails it and removes the disk) is finished as a destroy: the final sync
# runs, the detach succeeds, the state is safe, and the data written before
# is on the backing device.
# group: main
# timeout: 240
set -eu
. "$USRBD_TESTS/lib.sh"

check "modprobe dm_delay" modprobe dm_delay
truncate -s 64M "$USRBD_TMP/lower.img"
loop=$(losetup -f --show "$USRBD_TMP/lower.img")
dm_cleanup() {
	lib_cleanup
	dmsetup remove --noudevsync --force usrbd-slow 2>/dev/null || true
	losetup -d "$loop" 2>/dev/null || true
}
trap dm_cleanup EXIT
# Reads wait 10 s, writes and flushes go straight through.
check "dm-delay device" dmsetup create --noudevsync usrbd-slow --table "0 131072 delay $loop 0 10000 $loop 0 0"
dmsetup mknodes usrbd-slow 2>/dev/null || true
load_module
# One queue per CPU; the server on CPU 1, the stuck reader on CPU 0, so the
# detach's own flush goes to the queue whose worker is free.
log "usrbd serve on CPU 1"
slog=$USRBD_TMP/server-usrbd0.log
taskset -c 1 "$USRBD" serve --name usrbd0 --size 64MiB --backend file \
	--file /dev/mapper/usrbd-slow --direct --queues 2 --timeout-ms 60000 >"$slog" 2>&1 &
srv=$!
track $srv
wait_until 60 "serving" grep -q 'usrbd: serving /dev/usrbd0' "$slog"
wait_until 10 "/dev/usrbd0" test -b /dev/usrbd0
dd if=/dev/urandom of="$USRBD_TMP/data" bs=1M count=4 status=none
check "write 4 MiB" dd if="$USRBD_TMP/data" of=/dev/usrbd0 bs=1M oflag=direct conv=fsync status=none
echo 2000 >/sys/module/usrbd/parameters/destroy_timeout_ms
taskset -c 0 dd if=/dev/usrbd0 of=/dev/null bs=4k count=1 skip=10000 iflag=direct 2>/dev/null &
reader=$!
track $reader
inflight() { [ "$(jfield usrbd0 .kernel.inflight)" -ge 1 ]; }
wait_until 10 "the READ in flight" inflight
rc=0
out=$("$USRBD" detach --socket "$(sock usrbd0)" 2>&1) || rc=$?
log "usrbd detach: exit $rc: $out"
grep -E 'destroy|deadline' "$slog" | tail -n 5
[ $rc -eq 0 ] || fail "a detach whose destroy hit its deadline failed: $out"
check "state is safe" state_is usrbd0 safe
check_gone usrbd0
grep -q 'final sync' "$slog" || fail "no final sync after the destroy"
dd if="$loop" of="$USRBD_TMP/back" bs=1M count=4 iflag=direct status=none
check "the backing device holds the 4 MiB" cmp "$USRBD_TMP/data" "$USRBD_TMP/back"
stop_server $srv
