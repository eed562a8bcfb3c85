#!/bin/sh
# Proves: with --export usb, a host-side eject of the drive (allow medium
# removal, then START STOP UNIT eject, as a desktop's "eject" does) makes
# the service detach as the button would: the RAM image is saved with the
# host's files and the state is safe, so unplugging next loses nothing.
# group: main
# timeout: 300
set -eu
. "$USRBD_TESTS/lib.sh"

size=$((64 * 1024 * 1024))
usb_host_setup
load_module
image=$USRBD_TMP/saved.img
start_server usrbd0 --size 64MiB --backend ram --image "$image" --export usb
srv=$SERVER_PID
wait_usb_disk usrbd "$size"
sd=$USB_SD
check "host: mkfs.ext4 /dev/$sd" mkfs.ext4 -q -F "/dev/$sd"
mount_dev "/dev/$sd" "$USRBD_TMP/host"
make_files "$USRBD_TMP/host"
tree_sums "$USRBD_TMP/host" >"$USRBD_TMP/expected.sums"
check "host: umount" umount "$USRBD_TMP/host"
# SCSI_IOCTL_DOORUNLOCK, then CDROMEJECT (START STOP UNIT, LoEj).
check "host: eject /dev/$sd" python3 -c '
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK)
fcntl.ioctl(fd, 0x5381)
fcntl.ioctl(fd, 0x5309)
' "/dev/$sd"
wait_until 30 "the LUN to lose its medium" test -z "$(jfield usrbd0 .usb.medium | grep -v null)"
wait_state usrbd0 safe 60
log "ok: the host's eject detached the device"
check_gone usrbd0
image_holds_files "$image" "$USRBD_TMP/expected.sums"
stop_server $srv
