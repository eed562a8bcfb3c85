#!/bin/sh
# Proves: a long press (held past --long-press-ms) detaches the device and
# then runs the --poweroff-cmd (a script writing a marker here).
# group: main
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
start_panel
marker=$USRBD_TMP/powered-off
cat >"$USRBD_TMP/poweroff.sh" <<SH
#!/bin/sh
date +%s.%N >"$marker"
SH
chmod +x "$USRBD_TMP/poweroff.sh"
# shellcheck disable=SC2086
start_server usrbd0 --size 64MiB --backend ram --long-press-ms 1000 \
	--poweroff-cmd "$USRBD_TMP/poweroff.sh" $PANEL_ARGS
write_read_check /dev/usrbd0
press_button 2500
wait_until 60 "the poweroff command to run" test -e "$marker"
# The detach must be complete before the power-off command runs.
[ ! -e /sys/block/usrbd0 ] || fail "the poweroff command ran while usrbd0 still existed"
log "ok: poweroff command ran after the device was destroyed"
check_gone usrbd0
