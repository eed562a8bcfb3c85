#!/bin/sh
# Proves: while a process holds a file open on the mounted device, detach
# fails with a clear error, the error LED lights, the device keeps serving;
# once the file is closed, detach succeeds and the LEDs show safe.
# group: main
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
start_panel
# shellcheck disable=SC2086
start_server usrbd0 --size 64MiB --backend ram $PANEL_ARGS
srv=$SERVER_PID
check "mkfs.ext4" mkfs.ext4 -q -F /dev/usrbd0
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt"
echo held >"$USRBD_TMP/mnt/held"
sleep 600 <"$USRBD_TMP/mnt/held" &
holder=$!
track $holder
rc=0
out=$("$USRBD" detach --socket "$(sock usrbd0)" 2>&1) || rc=$?
log "usrbd detach with a file held open: exit $rc: $out"
[ "$rc" -eq 1 ] || fail "detach of a busy mount exited $rc, want 1"
echo "$out" | grep -qiE 'busy|in use' || fail "detach error does not say the mount is busy: $out"
wait_until 10 "error LED on (uinput LED event)" sh -c "[ \"\$(awk '\$2 == \"error\" { v = \$3 } END { print v }' '$PANEL_EVENTS')\" = 1 ]"
log "ok: error LED lit"
check "still mounted" is_mounted /dev/usrbd0
check "device node still there" test -b /dev/usrbd0
dd if=/dev/urandom of="$USRBD_TMP/mnt/after" bs=64k count=32 conv=fsync status=none
sha=$(sha256sum <"$USRBD_TMP/mnt/after")
echo 3 >/proc/sys/vm/drop_caches
[ "$(sha256sum <"$USRBD_TMP/mnt/after")" = "$sha" ] || fail "I/O after the refused detach returned other data"
log "ok: the device keeps serving after the refused detach"
kill -KILL $holder
wait $holder 2>/dev/null || true
out=$("$USRBD" detach --socket "$(sock usrbd0)" 2>&1) || fail "detach after closing the file failed: $out"
log "usrbd detach: $out"
check "state is safe" state_is usrbd0 safe
is_mounted /dev/usrbd0 && fail "still mounted after the second detach"
check_gone usrbd0
sleep 1.5
[ "$(last_led error)" = 0 ] || fail "error LED still on after the successful detach"
[ "$(last_led status)" = 0 ] || fail "status LED not off when safe"
log "ok: LEDs off when safe"
stop_server $srv
