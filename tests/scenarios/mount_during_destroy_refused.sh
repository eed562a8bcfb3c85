#!/bin/sh
# Proves: a filesystem cannot be mounted on a disk a graceful destroy is
# taking away, not even through a partition that is already open. The
# destroy reserves the disk's claim: the mount waits, then fails once the
# disk is gone, and nothing ends up mounted on a removed disk. On 6.1 a
# second open of an open partition never reaches the driver's open, so
# DRAINING alone did not stop such a mount; 6.12 always calls it (this VM),
# so here the scenario also passes on the module before the reservation.
# group: main
# timeout: 180
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
start_server usrbd0 --size 64MiB --backend ram --timeout-ms 30000
srv=$SERVER_PID
one_partition usrbd0
check "mkfs.ext4 /dev/usrbd0p1" mkfs.ext4 -q -F /dev/usrbd0p1
sleep 600 </dev/usrbd0p1 &
holder=$!
track $holder
# Dirty pages beyond the (empty) filesystem's used blocks, for the write
# back to stall on while the server is stopped.
check "4 MiB buffered" dd if=/dev/urandom of=/dev/usrbd0p1 bs=1M seek=48 count=4 status=none
kill -STOP "$srv"
"$USRBD" destroy --name usrbd0 --timeout-ms 20000 >"$USRBD_TMP/destroy.out" 2>&1 &
destroyer=$!
track $destroyer
sleep 2
mkdir -p "$USRBD_TMP/mnt"
mount /dev/usrbd0p1 "$USRBD_TMP/mnt" >"$USRBD_TMP/mount.out" 2>&1 &
mounter=$!
track $mounter
LIB_MOUNTS="$USRBD_TMP/mnt $LIB_MOUNTS"
sleep 3
kill -CONT "$srv"
wait_until 60 "the destroy to return" not_running $destroyer
drc=0
wait $destroyer || drc=$?
wait_until 60 "the mount to return" not_running $mounter
mrc=0
wait $mounter || mrc=$?
log "destroy: exit $drc $(cat "$USRBD_TMP/destroy.out"); mount: exit $mrc $(cat "$USRBD_TMP/mount.out")"
kill -KILL $holder 2>/dev/null || true
if is_mounted /dev/usrbd0p1; then
	fail "ext4 got mounted on /dev/usrbd0p1 while the disk was being destroyed"
fi
[ "$mrc" -ne 0 ] || fail "the mount reported success"
[ "$drc" -eq 0 ] || fail "the destroy failed (exit $drc)"
check_gone usrbd0
log "ok: the mount waited and failed; nothing mounted on the removed disk"
kill -KILL "$srv" 2>/dev/null || true
