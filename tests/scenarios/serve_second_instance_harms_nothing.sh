#!/bin/sh
# Proves: a second `usrbd serve` of a device name already served exits
# non-zero with a clear error before it does anything: it loads no second
# copy of the RAM image and leaves the first instance's LEDs and device as
# they were.
# group: main
# timeout: 180
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
start_panel
img=$USRBD_TMP/ram.img
dd if=/dev/urandom of="$img" bs=1M count=16 status=none
truncate -s 64M "$img"
# shellcheck disable=SC2086
start_server usrbd0 --backend ram --image "$img" $PANEL_ARGS
srv=$SERVER_PID
wait_until 10 "status LED on (serving)" sh -c "[ \"\$(awk '\$2 == \"status\" { v = \$3 } END { print v }' '$PANEL_EVENTS')\" = 1 ]"
events=$(wc -l <"$PANEL_EVENTS")
rc=0
# shellcheck disable=SC2086
timeout 60 "$USRBD" serve --name usrbd0 --backend ram --image "$img" $PANEL_ARGS \
	>"$USRBD_TMP/second.log" 2>&1 || rc=$?
cat "$USRBD_TMP/second.log"
[ $rc -ne 0 ] || fail "the second instance exited 0"
[ $rc -ne 124 ] || fail "the second instance kept running"
grep -qi 'already' "$USRBD_TMP/second.log" || fail "the second instance does not say the device is already served"
grep -q 'loading image' "$USRBD_TMP/second.log" && fail "the second instance loaded a second copy of the RAM image"
sleep 1
[ "$(wc -l <"$PANEL_EVENTS")" -eq "$events" ] || {
	tail -n 20 "$PANEL_EVENTS"
	fail "the second instance changed the LEDs"
}
[ "$(last_led status)" = 1 ] || fail "status LED not on after the second instance"
check "the first instance still serves" state_is usrbd0 serving
write_read_check /dev/usrbd0
stop_server $srv
