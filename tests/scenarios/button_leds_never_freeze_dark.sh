#!/bin/sh
# Proves: a status LED blink goes on when the service dies, so a killed
# service never reads as "safe" (status dark): in state error (a RAM image
# save that found no room), SIGKILL of the server, and the LED class `timer`
# trigger keeps toggling the status LED.
# group: main
# timeout: 180
set -eu
. "$USRBD_TESTS/lib.sh"

check "modprobe ledtrig_timer" modprobe ledtrig_timer
small=$USRBD_TMP/small
mkdir -p "$small"
mount -t tmpfs -o size=80m small "$small"
LIB_MOUNTS="$small $LIB_MOUNTS"
load_module
start_panel
# shellcheck disable=SC2086
start_server usrbd0 --size 64MiB --backend ram --image "$small/ram.img" $PANEL_ARGS
srv=$SERVER_PID
dd if=/dev/urandom of=/dev/usrbd0 bs=1M count=8 oflag=direct status=none
dd if=/dev/zero of="$small/filler" bs=1M status=none 2>/dev/null || true
rc=0
"$USRBD" detach --socket "$(sock usrbd0)" >/dev/null 2>&1 || rc=$?
[ $rc -eq 1 ] || fail "the detach with no room for the image exited $rc, want 1"
check "state is error" state_is usrbd0 error
status_events() { awk '$2 == "status"' "$PANEL_EVENTS" | wc -l; }
kill -KILL $srv
wait_until 30 "the killed server to exit" not_running $srv
n0=$(status_events)
log "status LED events at the kill: $n0"
blinks_on() { [ "$(status_events)" -ge $((n0 + 4)) ]; }
wait_until 20 "the status LED to keep blinking after the kill (4 more changes)" blinks_on
log "ok: status LED events 20 s after the kill: $(status_events)"
# The runner removes the device the dead server left.
