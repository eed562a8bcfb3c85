#!/bin/sh
# Proves: the device declares a volatile write cache, and an fsync/sync on a
# mounted ext4 reaches the server as FLUSH requests: `usrbd status --json`
# shows .served.flushes and .kernel.ops.flush.completed increase.
# group: main
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
start_server usrbd0 --size 64MiB --backend ram
cache=$(cat /sys/block/usrbd0/queue/write_cache)
[ "$cache" = "write back" ] || fail "queue/write_cache is '$cache', want 'write back'"
log "ok: write_cache = write back"
check "mkfs.ext4" mkfs.ext4 -q -F /dev/usrbd0
mount_dev /dev/usrbd0 "$USRBD_TMP/mnt"
served0=$(jfield usrbd0 .served.flushes)
kernel0=$(jfield usrbd0 .kernel.ops.flush.completed)
log "before: served.flushes=$served0 kernel.ops.flush.completed=$kernel0"
dd if=/dev/urandom of="$USRBD_TMP/mnt/data" bs=64k count=16 conv=fsync status=none
sync
served1=$(jfield usrbd0 .served.flushes)
kernel1=$(jfield usrbd0 .kernel.ops.flush.completed)
log "after:  served.flushes=$served1 kernel.ops.flush.completed=$kernel1"
[ "$served1" -gt "$served0" ] || fail "served.flushes did not increase ($served0 -> $served1)"
[ "$kernel1" -gt "$kernel0" ] || fail "kernel.ops.flush.completed did not increase ($kernel0 -> $kernel1)"
log "ok: fsync reached the server as FLUSH"
check "umount" umount "$USRBD_TMP/mnt"
stop_server "$SERVER_PID"
