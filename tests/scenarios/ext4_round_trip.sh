#!/bin/sh
# Proves: an ext4 filesystem made on a RAM-backed usrbd device keeps every
# file byte for byte across unmount, cache drop and remount, and the server
# exits 0 on SIGTERM afterwards.
# group: main
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
start_server usrbd0 --size 64MiB --backend ram
check "mkfs.ext4 /dev/usrbd0" mkfs.ext4 -q -F /dev/usrbd0
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt"
make_files "$USRBD_TMP/mnt"
tree_sums "$USRBD_TMP/mnt" >"$USRBD_TMP/expected.sums"
check "umount" umount "$USRBD_TMP/mnt"
# Reads after the remount must come from the device, not the page cache.
echo 3 >/proc/sys/vm/drop_caches
check "blockdev --flushbufs" blockdev --flushbufs /dev/usrbd0
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt"
same_files "$USRBD_TMP/expected.sums" "$USRBD_TMP/mnt"
check "umount" umount "$USRBD_TMP/mnt"
check "e2fsck -fn /dev/usrbd0 clean" e2fsck -fn /dev/usrbd0
stop_server "$SERVER_PID"
check_gone usrbd0
