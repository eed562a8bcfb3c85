#!/bin/sh
# Proves: a SIGTERM whose detach meets a busy mount (a process holds a file
# open, as at shutdown before the holder is killed) keeps retrying: once the
# holder is gone the server unmounts, saves the RAM image and exits 0, and
# the image holds the files.
# group: main
# timeout: 240
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
img=$USRBD_TMP/ram.img
start_server usrbd0 --size 64MiB --backend ram --image "$img"
srv=$SERVER_PID
slog=$USRBD_TMP/server-usrbd0.log
check "mkfs.ext4" mkfs.ext4 -q -F /dev/usrbd0
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt"
make_files "$USRBD_TMP/mnt"
tree_sums "$USRBD_TMP/mnt" >"$USRBD_TMP/expected.sums"
sleep 600 <"$USRBD_TMP/mnt/file1" &
holder=$!
track $holder
kill -TERM $srv
wait_until 30 "the SIGTERM detach to find the mount busy" grep -q 'busy' "$slog"
check "the server is alive while the mount is busy" running $srv
kill -KILL $holder
wait $holder 2>/dev/null || true
wait_until 60 "the server to exit once the holder is gone" not_running $srv
rc=0
wait $srv || rc=$?
[ $rc -eq 0 ] || fail "the server exited $rc"
is_mounted /dev/usrbd0 && fail "still mounted"
check_gone usrbd0
image_holds_files "$img" "$USRBD_TMP/expected.sums"
