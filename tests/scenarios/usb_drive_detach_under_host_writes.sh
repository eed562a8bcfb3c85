#!/bin/sh
# Proves: while the USB host writes continuously to the raw disk (vmkit
# ackwrite on /dev/sdX: O_DIRECT write + fdatasync, logged once both
# returned), a short button press ejects the medium, the host's writes start
# failing, the device is destroyed and the RAM image saved, and every write
# the host saw acknowledged is in the saved image (vmkit ackcheck).
# group: main
# timeout: 300
set -eu
. "$USRBD_TESTS/lib.sh"

size=$((64 * 1024 * 1024))
usb_host_setup
load_module
start_panel
image=$USRBD_TMP/saved.img
# shellcheck disable=SC2086 # word splitting of the flag list is meant
start_server usrbd0 --size 64MiB --backend ram --image "$image" --export usb $PANEL_ARGS
srv=$SERVER_PID
wait_usb_disk usrbd "$size"
sd=$USB_SD

"$VMKIT" ackwrite --dev "/dev/$sd" --log "$USRBD_TMP/ack.log" --block 4096 \
	--span $((32 * 1024 * 1024)) >"$USRBD_TMP/ackwrite.out" 2>&1 &
ack=$!
track $ack
sleep 8
running $ack || {
	cat "$USRBD_TMP/ackwrite.out"
	fail "ackwrite ended before the press"
}
before=$(wc -l <"$USRBD_TMP/ack.log")
[ "$before" -gt 0 ] || fail "the host got no write acknowledged in 8 s"
log "pressing with $before host writes acknowledged so far"
press_button 200
wait_state usrbd0 safe 90
# The host loses the medium like a pulled stick: its writes fail.
wait_until 60 "ackwrite to stop on the ejected medium" not_running $ack
rc=0
wait $ack || rc=$?
cat "$USRBD_TMP/ackwrite.out"
check "ackwrite stopped by an I/O error (exit 2), not by a crash" test "$rc" -eq 2
after=$(wc -l <"$USRBD_TMP/ack.log")
log "host writes acknowledged: $before before the press, $after in all"
[ "$after" -gt "$before" ] || log "note: no write was acknowledged after the press began"
wait_until 30 "host side sees the medium gone" usb_medium_gone "$sd"
check_gone usrbd0
check "every write the host saw acknowledged is in the saved image" \
	"$VMKIT" ackcheck --image "$image" --log "$USRBD_TMP/ack.log" --block 4096
check "LED sequence serving,detaching,safe" \
	"$VMKIT" leds-check --events "$PANEL_EVENTS" --expect serving,detaching,safe
stop_server "$srv"
check "the gadget is gone after SIGTERM" test ! -e "$USB_GADGET_DIR"
