#!/bin/sh
# Proves: a RAM server killed (SIGKILL) with ext4 mounted on its device is
# not replaced by one that adopts the orphan (its RAM is gone; the mount
# would sit on the last saved image's older content and the next detach
# would save that mix over the last good image). The new `usrbd serve`
# destroys the orphan by force, leaves the saved image byte for byte as it
# was, reports state error with the reason and lights the error LED;
# `usrbd attach` then serves the saved image again.
# group: main
# timeout: 300
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
start_panel
img=$USRBD_TMP/ram.img
# shellcheck disable=SC2086
start_server usrbd0 --size 64MiB --backend ram --image "$img" $PANEL_ARGS
check "mkfs.ext4" mkfs.ext4 -q -F /dev/usrbd0
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt"
make_files "$USRBD_TMP/mnt"
tree_sums "$USRBD_TMP/mnt" >"$USRBD_TMP/expected.sums"
out=$("$USRBD" detach --socket "$(sock usrbd0)") || fail "usrbd detach failed: $out"
good=$(sha256sum <"$img")
log "last good image saved: $good"

# Serve it again, change it under a mount, and kill the server.
out=$("$USRBD" attach --socket "$(sock usrbd0)") || fail "usrbd attach failed: $out"
wait_until 10 "/dev/usrbd0" test -b /dev/usrbd0
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt"
dd if=/dev/urandom of="$USRBD_TMP/mnt/lost" bs=1M count=2 conv=fsync status=none
kill -KILL "$SERVER_PID"
wait_until 30 "the killed server to exit" not_running "$SERVER_PID"
[ -e /sys/block/usrbd0 ] || fail "the device went away with its server (nothing to adopt)"

slog=$USRBD_TMP/server-again.log
"$USRBD" serve --name usrbd0 --size 64MiB --backend ram --image "$img" $PANEL_ARGS >"$slog" 2>&1 &
srv=$!
track $srv
wait_until 60 "the new server's control socket" status_json usrbd0
if grep -q 're-attaching' "$slog"; then
	cat "$slog"
	fail "the new RAM server adopted the orphaned device under the live mount"
fi
wait_state usrbd0 error 30
err=$(jfield usrbd0 .error)
log "status error: $err"
echo "$err" | grep -q usrbd0 || fail "the status error does not name the device: $err"
wait_until 30 "the orphan destroyed (/sys/block/usrbd0 gone)" test ! -e /sys/block/usrbd0
wait_until 10 "error LED on" sh -c "[ \"\$(awk '\$2 == \"error\" { v = \$3 } END { print v }' '$PANEL_EVENTS')\" = 1 ]"
log "ok: error LED on"
umount "$USRBD_TMP/mnt" 2>/dev/null || umount -l "$USRBD_TMP/mnt"
[ "$(sha256sum <"$img")" = "$good" ] || fail "the last good image changed"
log "ok: the last good image is untouched"

# The saved image serves again, with the files of the last detach.
out=$("$USRBD" attach --socket "$(sock usrbd0)") || fail "usrbd attach after the orphan failed: $out"
wait_until 10 "/dev/usrbd0" test -b /dev/usrbd0
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt"
same_files "$USRBD_TMP/expected.sums" "$USRBD_TMP/mnt"
umount "$USRBD_TMP/mnt"
stop_server $srv
image_holds_files "$img" "$USRBD_TMP/expected.sums"
