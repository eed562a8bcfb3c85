#!/bin/sh
# Proves (second half of crash_consistency_write, next boot): serving the
# same backing file again, ext4 recovers its journal and `fsck.ext4 -fn` is
# clean, and the fsynced file is intact.
# group: main
# order: 10
set -eu
. "$USRBD_TESTS/lib.sh"

dir=$USRBD_RWDIR/crash
[ -e "$dir/disk.img" ] ||
	fail "no state from crash_consistency_write (it runs in the boot before this one)"
load_module
start_server usrbd0 --backend file --file "$dir/disk.img"
# Mounting replays the journal, as after any power cut; the check follows.
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt"
check "umount after journal recovery" umount "$USRBD_TMP/mnt"
check "fsck.ext4 -fn clean" fsck.ext4 -fn /dev/usrbd0
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt" -o ro
want=$(crash_payload | sha256sum)
got=$(sha256sum <"$USRBD_TMP/mnt/synced") || fail "the fsynced file is gone"
[ "$got" = "$want" ] || fail "the fsynced file changed: sha256 $got, want $want"
log "ok: the fsynced file survived the power-off ($got)"
check "umount" umount "$USRBD_TMP/mnt"
stop_server "$SERVER_PID"
