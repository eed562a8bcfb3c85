#!/bin/sh
# Proves: settings that would silently break durability are refused with an
# error naming the problem, and create no device: a file backend without the
# flush feature, a block device that is mounted, a RAM device larger than
# the machine can hold. A RAM image that did not exist at start is not saved
# onto a filesystem mounted over its directory later: that detach fails, the
# other filesystem's file is untouched, and once it is unmounted the save
# goes where it belonged.
# group: main
# timeout: 240
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
# refused CASE SERVE-ARGS...: serve exits non-zero within 60 s, says CASE's
# word (the first argument, a regex), and leaves no device.
refused() {
	want=$1
	shift
	rc=0
	timeout 60 "$USRBD" serve --name usrbd0 "$@" >"$USRBD_TMP/refused.log" 2>&1 || rc=$?
	cat "$USRBD_TMP/refused.log"
	[ $rc -ne 124 ] || fail "serve $* kept running"
	[ $rc -ne 0 ] || fail "serve $* exited 0"
	grep -qiE "$want" "$USRBD_TMP/refused.log" || fail "serve $*: the error does not mention $want"
	listed usrbd0 && fail "serve $* left a device"
	log "ok: serve $* refused (exit $rc)"
}

printf '[device]\nfeatures = ["fua", "discard", "write_zeroes"]\n' >"$USRBD_TMP/noflush.toml"
refused flush --config "$USRBD_TMP/noflush.toml" --size 16MiB --backend file --file "$USRBD_TMP/f.img"

truncate -s 32M "$USRBD_TMP/lower.img"
check "mkfs.ext4 on the lower image" mkfs.ext4 -q -F "$USRBD_TMP/lower.img"
loop=$(losetup -f --show "$USRBD_TMP/lower.img")
mount_dev "$loop" "$USRBD_TMP/lower"
refused 'in use' --backend file --file "$loop"
umount "$USRBD_TMP/lower"
losetup -d "$loop"

total_mib=$(awk '$1 == "MemTotal:" { print int($2 / 1024) }' /proc/meminfo)
refused 'size' --size "${total_mib}MiB" --backend ram

dir=$USRBD_TMP/data
mkdir -p "$dir"
start_server usrbd0 --size 16MiB --backend ram --image "$dir/ram.img"
srv=$SERVER_PID
grep -q 'does not exist' "$USRBD_TMP/server-usrbd0.log" || fail "serve did not say the image is missing"
dd if=/dev/urandom of="$USRBD_TMP/data.bin" bs=1M count=4 status=none
check "write 4 MiB" dd if="$USRBD_TMP/data.bin" of=/dev/usrbd0 bs=1M oflag=direct conv=fsync status=none
mount -t tmpfs later "$dir"
LIB_MOUNTS="$dir $LIB_MOUNTS"
dd if=/dev/urandom of="$dir/ram.img" bs=1M count=1 status=none
theirs=$(sha256sum <"$dir/ram.img")
rc=0
out=$("$USRBD" detach --socket "$(sock usrbd0)" 2>&1) || rc=$?
log "usrbd detach with a filesystem mounted over the image directory: exit $rc: $out"
[ "$(sha256sum <"$dir/ram.img")" = "$theirs" ] || fail "the save overwrote a file of the filesystem mounted over the image directory"
[ $rc -eq 1 ] || fail "that detach exited $rc, want 1"
umount "$dir"
out=$("$USRBD" detach --socket "$(sock usrbd0)" 2>&1) || fail "usrbd detach after the unmount failed: $out"
head -c 4194304 "$dir/ram.img" >"$USRBD_TMP/saved.bin"
check "the image holds the 4 MiB" cmp "$USRBD_TMP/data.bin" "$USRBD_TMP/saved.bin"
stop_server $srv
