#!/bin/sh
# Proves: a file-backed device whose backing file sits on a nearly full
# filesystem (a 24 MiB tmpfs under a 64 MiB sparse image) fails the writes
# that need new space with ENOSPC (or EIO) to the application, keeps every
# block written before intact, keeps serving the space it has, and its
# service log names the error; after the detach the backing file still holds
# the earlier data. CI and soak: the same (it is deterministic).
# group: rel
# order: 60
# timeout: 180
# soak-timeout: 300
set -eu
. "$USRBD_TESTS/lib.sh"

small=$USRBD_TMP/small
mkdir -p "$small"
mount -t tmpfs -o size=24m small "$small"
LIB_MOUNTS="$small $LIB_MOUNTS"
img=$small/backing.img
# Sparse: the image claims 64 MiB, the filesystem has room for 24.
truncate -s 64M "$img"
load_module
t0=$(date +%s)
start_server usrbd0 --size 64MiB --backend file --file "$img"
slog=$USRBD_TMP/server-usrbd0.log

# 16 MiB of known data at the start: fits.
dd if=/dev/urandom of="$USRBD_TMP/early" bs=1M count=16 status=none
check "write the first 16 MiB" dd if="$USRBD_TMP/early" of=/dev/usrbd0 bs=1M oflag=direct conv=fsync status=none
log "tmpfs after the first 16 MiB: $(df -k "$small" | awk 'NR == 2 { print $3 " KiB used, " $4 " KiB free" }')"

# 32 MiB more further on: the filesystem runs out on the way.
dd if=/dev/urandom of="$USRBD_TMP/late" bs=1M count=32 status=none
rc=0
dd if="$USRBD_TMP/late" of=/dev/usrbd0 bs=1M seek=24 oflag=direct conv=fsync status=none \
	2>"$USRBD_TMP/dd.err" || rc=$?
cat "$USRBD_TMP/dd.err"
[ $rc -ne 0 ] || fail "32 MiB written past a full backing filesystem with no error"
if grep -q 'No space left on device' "$USRBD_TMP/dd.err"; then
	seen=ENOSPC
elif grep -q 'Input/output error' "$USRBD_TMP/dd.err"; then
	seen=EIO
else
	fail "the failed write reported neither ENOSPC nor EIO"
fi
log "ok: the application got $seen"

# The service says what happened.
grep -iE 'no space left|os error 28|ENOSPC' "$slog" >"$USRBD_TMP/log.hits" || {
	tail -n 20 "$slog"
	fail "the service log does not mention the full backing store"
}
log "service log: $(head -n 1 "$USRBD_TMP/log.hits")"

# Nothing written before is damaged, and the allocated space still serves.
echo 3 >/proc/sys/vm/drop_caches
dd if=/dev/usrbd0 of="$USRBD_TMP/early.back" bs=1M count=16 iflag=direct status=none
check "the first 16 MiB intact after ENOSPC" cmp "$USRBD_TMP/early" "$USRBD_TMP/early.back"
dd if=/dev/urandom of="$USRBD_TMP/rewrite" bs=1M count=4 status=none
check "rewrite 4 MiB in place" dd if="$USRBD_TMP/rewrite" of=/dev/usrbd0 bs=1M seek=4 oflag=direct conv=fsync,notrunc status=none
dd if="$USRBD_TMP/rewrite" of="$USRBD_TMP/early" bs=1M seek=4 conv=notrunc status=none
dd if=/dev/usrbd0 of="$USRBD_TMP/early.back" bs=1M count=16 iflag=direct status=none
check "the first 16 MiB read back with the rewrite" cmp "$USRBD_TMP/early" "$USRBD_TMP/early.back"
check "state is serving" state_is usrbd0 serving
errors=$(jfield usrbd0 .served.errors)
[ "$errors" -gt 0 ] || fail "usrbd status counts no served error"

stop_server "$SERVER_PID"
check_gone usrbd0
dd if="$img" of="$USRBD_TMP/early.file" bs=1M count=16 status=none
check "the backing file holds the first 16 MiB" cmp "$USRBD_TMP/early" "$USRBD_TMP/early.file"
figures fs_mib=24 device_mib=64 intact_mib=16 app_error=$seen served_errors=$errors \
	log_lines="$(wc -l <"$USRBD_TMP/log.hits")" seconds=$(($(date +%s) - t0))
