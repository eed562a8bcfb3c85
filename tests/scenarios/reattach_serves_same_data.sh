#!/bin/sh
# Proves: after a detach the server stays up in state safe, and both a short
# button press and `usrbd attach` bring the device back with the same data.
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
make_files "$USRBD_TMP/mnt"
tree_sums "$USRBD_TMP/mnt" >"$USRBD_TMP/expected.sums"

out=$("$USRBD" detach --socket "$(sock usrbd0)" 2>&1) || fail "detach: $out"
check_gone usrbd0
press_button 200
wait_state usrbd0 serving 60
wait_until 20 "/dev/usrbd0 back after the press" test -b /dev/usrbd0
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt"
same_files "$USRBD_TMP/expected.sums" "$USRBD_TMP/mnt"
log "ok: re-attached by the button with the same data"

out=$("$USRBD" detach --socket "$(sock usrbd0)" 2>&1) || fail "second detach: $out"
check_gone usrbd0
out=$("$USRBD" attach --socket "$(sock usrbd0)" 2>&1) || fail "usrbd attach: $out"
wait_state usrbd0 serving 60
wait_until 20 "/dev/usrbd0 back after usrbd attach" test -b /dev/usrbd0
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt"
same_files "$USRBD_TMP/expected.sums" "$USRBD_TMP/mnt"
log "ok: re-attached by usrbd attach with the same data"
check "umount" umount "$USRBD_TMP/mnt"
stop_server $srv
