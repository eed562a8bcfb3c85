#!/bin/sh
# The appliance demo, run inside the VM by `cargo xtask demo`:
#   sh tests/demo.sh PLAN
# A RAM-backed device with a uinput front panel: format, write, press the
# button, watch the LEDs (read back from the uinput device), the clean
# detach, then the saved RAM image checked against the files' checksums.
set -eu
. "$1"
PATH="$(dirname "$USRBD"):$PATH"
export PATH
export USRBD_TMP=/tmp/usrbd-demo
. "$USRBD_TESTS/lib.sh"

say() { printf '\n== %s\n' "$*"; }
on_off() { if [ "$1" = 1 ]; then echo on; else echo off; fi; }

say "kernel $(uname -r), loading usrbd.ko"
load_module
say "front panel: uinput button (KEY_POWER) and LEDs numlock=status capslock=error scrolllock=activity"
start_panel
# Each LED change as the kernel delivers it to the uinput device. The
# activity LED's per-I/O flicker is summed up, and a blinking status LED
# (changes less than 0.4 s apart) is shown once per run of blinks.
# (A shell loop, not awk: mawk buffers its input from a pipe.)
tail -n +1 -f "$PANEL_EVENTS" | {
	act=0
	last=-1000
	blinking=0
	while read -r ms led val; do
		if [ "$led" = activity ]; then
			[ "$val" = 1 ] && act=$((act + 1))
			continue
		fi
		if [ "$act" -gt 0 ]; then
			echo "   [led] activity LED flashed $act times"
			act=0
		fi
		secs=$(printf '%d.%02d' $((ms / 1000)) $((ms % 1000 / 10)))
		if [ "$led" = status ]; then
			gap=$((ms - last))
			last=$ms
			if [ "$gap" -lt 400 ]; then
				[ "$blinking" = 1 ] || echo "   [led] ${secs} s  status blinking"
				blinking=1
				continue
			fi
			blinking=0
		fi
		echo "   [led] ${secs} s  $led $(on_off "$val")"
	done
} &
track $!

image=$USRBD_RWDIR/demo-ram.img
rm -f "$image"
say "usrbd serve: 64 MiB in RAM, image saved at detach to $image (a host directory)"
# shellcheck disable=SC2086
start_server usrbd0 --size 64MiB --backend ram --image "$image" $PANEL_ARGS
srv=$SERVER_PID
sleep 1
"$USRBD" status --socket "$(sock usrbd0)"

say "formatting /dev/usrbd0 (ext4) and mounting it"
mkfs.ext4 -F -q -L usrbd-demo /dev/usrbd0
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt"
df -h "$USRBD_TMP/mnt" | tail -n 1

say "writing files"
make_files "$USRBD_TMP/mnt"
tree_sums "$USRBD_TMP/mnt" >"$USRBD_TMP/expected.sums"
(cd "$USRBD_TMP/mnt" && find . -type f | LC_ALL=C sort | xargs ls -l | awk '{ printf "   %9d  %s\n", $5, $9 }')
sleep 1

say "pressing the button for 200 ms: sync and detach"
press_button 200
wait_state usrbd0 safe 90
sleep 1.5
echo "   [led] now: status $(on_off "$(last_led status)"), error $(on_off "$(last_led error)"), activity $(on_off "$(last_led activity)")"
say "after the detach"
"$USRBD" status --socket "$(sock usrbd0)"
is_mounted /dev/usrbd0 && fail "/dev/usrbd0 is still mounted"
echo "   mounted: no"
[ -e /dev/usrbd0 ] && fail "/dev/usrbd0 still exists"
echo "   /dev/usrbd0: gone"
echo "   usrbd list: $("$USRBD" list | wc -l) device(s)"

say "LED phases seen on the uinput device"
"$VMKIT" leds-check --events "$PANEL_EVENTS" --expect serving,detaching,safe

say "checking the saved RAM image ($(stat -c %s "$image") bytes) read-only"
image_holds_files "$image" "$USRBD_TMP/expected.sums"
stop_server $srv
echo
echo "demo: OK"
