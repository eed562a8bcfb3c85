#!/bin/sh
# Proves: with --export usb a RAM device (saved to --image) appears on the USB
# host side as a removable SCSI disk (vendor usrbd, TRAN=usb, 64 MiB); the
# host makes ext4, mounts it, copies files and syncs; a short button press
# while the host still has it mounted ejects the medium (host: size 0, "No
# medium found"), saves the image and destroys the device, LEDs serving ->
# detaching -> safe; after the journal replay a next mount would do, the
# saved image is fsck-clean and holds exactly the files. A second press
# brings the medium back with the same files; SIGTERM removes the gadget.
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
host_configured() { [ "$(jfield usrbd0 .usb.host)" = configured ]; }
wait_until 30 "usrbd status: the host configured the drive" host_configured
check "usrbd status: the LUN holds /dev/usrbd0" \
	test "$(jfield usrbd0 .usb.medium)" = /dev/usrbd0

check "host: mkfs.ext4 /dev/$sd" mkfs.ext4 -q -F "/dev/$sd"
mount_dev "/dev/$sd" "$USRBD_TMP/host"
make_files "$USRBD_TMP/host"
tree_sums "$USRBD_TMP/host" >"$USRBD_TMP/expected.sums"
check "host: sync" sync
log "host wrote $(wc -l <"$USRBD_TMP/expected.sums") files and synced; still mounted"

press_button 200
wait_state usrbd0 safe 90
wait_until 30 "host side sees the medium gone" usb_medium_gone "$sd"
log "ok: host side: /dev/$sd size 0, No medium found"
check_gone usrbd0
# The host's mount of /dev/sdX is no mount of /dev/usrbd0: the detach left it.
check "the host mount was not touched by the detach" is_mounted "/dev/$sd"
umount "$USRBD_TMP/host" 2>/dev/null || umount -l "$USRBD_TMP/host"
check "LED sequence serving,detaching,safe" \
	"$VMKIT" leds-check --events "$PANEL_EVENTS" --expect serving,detaching,safe

# The medium was pulled while mounted: replay the journal as the next mount
# would, on a copy, then it must be clean and hold every synced file.
cp "$image" "$USRBD_TMP/replayed.img"
check "journal replay of the saved image" e2fsck -E journal_only -y "$USRBD_TMP/replayed.img"
image_holds_files "$USRBD_TMP/replayed.img" "$USRBD_TMP/expected.sums"

press_button 200
wait_state usrbd0 serving 60
wait_until 30 "host side sees the medium again" usb_medium_is "$sd" "$size"
mount_dev "/dev/$sd" "$USRBD_TMP/host" -o ro
same_files "$USRBD_TMP/expected.sums" "$USRBD_TMP/host"
log "ok: re-attached by the button; the host reads the same files"
check "host: umount" umount "$USRBD_TMP/host"

stop_server "$srv"
check "the gadget is gone after SIGTERM" test ! -e "$USB_GADGET_DIR"
wait_until 20 "host side: /dev/$sd unplugged" test ! -e "/sys/block/$sd"
log "ok: drive unplugged from the host on exit"
