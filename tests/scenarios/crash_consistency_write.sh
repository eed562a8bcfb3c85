#!/bin/sh
# Proves (first half, see crash_consistency_check): a file written and
# fsynced on an ext4 served from a backing file in the host-backed rw dir,
# then the VM is powered off abruptly (sysrq o: no detach, no sync).
# group: quad
# order: 99
set -eu
. "$USRBD_TESTS/lib.sh"

dir=$USRBD_RWDIR/crash
rm -rf "$dir"
mkdir -p "$dir"
load_module
start_server usrbd0 --size 64MiB --backend file --file "$dir/disk.img"
check "mkfs.ext4" mkfs.ext4 -q -F /dev/usrbd0
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt"
# Earlier, unsynced writes around it must not matter to the synced file.
dd if=/dev/urandom of="$USRBD_TMP/mnt/noise" bs=1M count=4 status=none
crash_payload | dd of="$USRBD_TMP/mnt/synced" bs=1M conv=fsync iflag=fullblock status=none
sync "$USRBD_TMP/mnt"
dd if=/dev/urandom of="$USRBD_TMP/mnt/unsynced" bs=1M count=2 status=none
log "written and fsynced: $(sha256sum <"$USRBD_TMP/mnt/synced") synced"
power_off_abruptly_after_this
