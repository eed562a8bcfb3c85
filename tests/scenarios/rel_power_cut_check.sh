#!/bin/sh
# Proves (second half of rel_power_cut_write, next boot, after QEMU was
# killed by the host): serving the same backing files again, ext4 recovers
# its journal and `fsck.ext4 -fn` is clean, every fsynced file is intact,
# and every block ackwrite logged as acknowledged is on the raw device's
# backing file.
# group: main
# order: 11
# timeout: 180
# soak-timeout: 180
set -eu
. "$USRBD_TESTS/lib.sh"

pc=$USRBD_RWDIR/powercut
[ -s "$pc/expected.sums" ] && [ -e "$pc/disk.img" ] && [ -e "$pc/raw.img" ] ||
	fail "no state from rel_power_cut_write (it runs in the boot before this one)"
t0=$(date +%s)
load_module
start_server usrbd0 --backend file --file "$pc/disk.img"
# ($pc, not $dir: lib.sh's mount_dev sets dir.)
# Mounting replays the journal, as after any power cut; the check follows.
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt"
check "umount after journal recovery" umount "$USRBD_TMP/mnt"
check "fsck.ext4 -fn clean" fsck.ext4 -fn /dev/usrbd0
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt" -o ro
same_files "$pc/expected.sums" "$USRBD_TMP/mnt/synced"
check "umount" umount "$USRBD_TMP/mnt"
stop_server "$SERVER_PID"
ackcheck_image "$pc/raw.img" "$pc/ack.log"
figures fsynced_files="$(wc -l <"$pc/expected.sums")" acked="$(acked_count "$pc/ack.log")" \
	blocks_verified=$ACK_CHECKED missing=0 fsck=clean seconds=$(($(date +%s) - t0))
