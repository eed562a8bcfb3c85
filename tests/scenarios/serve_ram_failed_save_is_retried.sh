#!/bin/sh
# Proves: a RAM image save that fails for lack of space loses nothing and
# can be retried. `usrbd detach` with the image's filesystem full exits 1, state
# error, error LED on, no temporary file left; once space is freed the next
# `usrbd detach` saves the image. A SIGTERM whose save fails keeps the server
# (and the RAM data) alive; once space is freed it saves and exits 0.
# group: main
# timeout: 300
set -eu
. "$USRBD_TESTS/lib.sh"

small=$USRBD_TMP/small
mkdir -p "$small"
mount -t tmpfs -o size=100m small "$small"
LIB_MOUNTS="$small $LIB_MOUNTS"
img=$small/ram.img
no_tmp_left() { ! ls -a "$small" | grep -q '^\.ram\.img\.tmp-'; }
fill() { dd if=/dev/zero of="$small/filler" bs=1M status=none 2>/dev/null || true; }

load_module
start_panel
# shellcheck disable=SC2086
start_server usrbd0 --size 64MiB --backend ram --image "$img" $PANEL_ARGS
srv=$SERVER_PID
check "mkfs.ext4" mkfs.ext4 -q -F /dev/usrbd0
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt"
make_files "$USRBD_TMP/mnt"
tree_sums "$USRBD_TMP/mnt" >"$USRBD_TMP/expected.sums"

# 1. usrbd detach with the filesystem full, then again with room.
fill
rc=0
out=$("$USRBD" detach --socket "$(sock usrbd0)" 2>&1) || rc=$?
log "usrbd detach on a full filesystem: exit $rc: $out"
[ $rc -eq 1 ] || fail "the detach with no room for the image exited $rc, want 1"
check "state is error" state_is usrbd0 error
wait_until 10 "error LED on" sh -c "[ \"\$(awk '\$2 == \"error\" { v = \$3 } END { print v }' '$PANEL_EVENTS')\" = 1 ]"
check "no temporary image left after the failed save" no_tmp_left
rm -f "$small/filler"
out=$("$USRBD" detach --socket "$(sock usrbd0)" 2>&1) || fail "usrbd detach after freeing space failed: $out"
check "state is safe after the retried save" state_is usrbd0 safe
image_holds_files "$img" "$USRBD_TMP/expected.sums"

# 2. SIGTERM with the filesystem full: the server waits for room.
out=$("$USRBD" attach --socket "$(sock usrbd0)") || fail "usrbd attach failed: $out"
wait_until 10 "/dev/usrbd0" test -b /dev/usrbd0
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt"
dd if=/dev/urandom of="$USRBD_TMP/mnt/later" bs=1M count=3 status=none
tree_sums "$USRBD_TMP/mnt" >"$USRBD_TMP/expected.sums"
fill
kill -TERM $srv
wait_state usrbd0 error 60
check "the server is alive after the failed save" running $srv
rm -f "$small/filler"
wait_until 60 "the server to save and exit once space is free" not_running $srv
rc=0
wait $srv || rc=$?
[ $rc -eq 0 ] || fail "the server exited $rc after its retried save"
check_gone usrbd0
image_holds_files "$img" "$USRBD_TMP/expected.sums"
