#!/bin/sh
# Proves (graceful swap): with ext4 mounted on a file-backed device and a
# writer appending durably (write + fdatasync, vmkit ackwrite), `usrbd
# upgrade` hands the device to a new binary again and again with nothing
# lost: the old binary answers what it holds, fetches nothing more,
# flushes and execs the new one (same pid), which adopts the device and
# serves what waited in the module's queue. The writer sees 0 I/O errors,
# the kernel logs no ext4 or I/O error, every acknowledged block is in the
# file afterwards (ackcheck, 0 lost), and the module counts 0 timeouts.
# Upgrades alternate between the default binary (the server's own path,
# replaced on disk by a new file, as a package does) and --binary copies.
# Refused before anything is given up (the old instance serves on): a
# missing binary, one not executable, one that is no usrbd, a RAM device.
# A SIGTERM during an upgrade still detaches and exits 0.
# CI: 6 upgrades; soak: 100.
# group: rel
# order: 16
# timeout: 900
# soak-timeout: 7200
set -eu
. "$USRBD_TESTS/lib.sh"

upgrades=$(soak_or 6 100)
img=$USRBD_TMP/backing.img
ack=$USRBD_TMP/ack.log
mnt=$USRBD_TMP/mnt
bin=$USRBD_TMP/bin
sk=$(sock usrbd0)
mkdir -p "$bin"
# The server runs from a path this scenario may replace.
cp "$USRBD" "$bin/usrbd"
orig=$USRBD
USRBD=$bin/usrbd

status_field() { status_json usrbd0 | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
kernel_timeouts() { status_json usrbd0 | sed -n 's/.*"timeouts":\([0-9]*\).*/\1/p'; }

# refused WHY ARGS...: `usrbd upgrade ARGS` must fail, saying WHY, and leave
# the same instance serving.
refused() {
	why=$1
	shift
	before=$(status_field instance)
	if out=$("$orig" upgrade --socket "$sk" "$@" 2>&1); then
		echo "$out"
		fail "usrbd upgrade $* succeeded"
	fi
	echo "$out" | grep -q "$why" || {
		echo "$out"
		fail "usrbd upgrade $*: no \`$why\` in its error"
	}
	[ "$(status_field instance)" = "$before" ] || fail "usrbd upgrade $*: another instance serves"
	log "ok: refused ($*): $(echo "$out" | tail -n 1)"
}

load_module
start_server usrbd0 --size 64MiB --backend file --file "$img" --queues 2 \
	--timeout-ms 30000
pid=$SERVER_PID
check "mkfs.ext4" mkfs.ext4 -q -F /dev/usrbd0
mount_dev /dev/usrbd0 "$mnt"
check "8 MiB data file" dd if=/dev/zero of="$mnt/data" bs=1M count=8 conv=fsync status=none
dmesg_from=$(($(dmesg | wc -l) + 1))
ackwrite_start "$mnt/data" "$ack" $((8 * 1024 * 1024))

refused "No such file" --binary "$bin/missing"
cp "$orig" "$bin/noexec"
chmod 644 "$bin/noexec"
refused "not executable" --binary "$bin/noexec"
refused "no usrbd" --binary /bin/true
# A RAM device's data lives in its server's memory: refused, says detach.
start_server usrbd1 --size 16MiB --backend ram
ram_pid=$SERVER_PID
if out=$("$orig" upgrade --socket "$(sock usrbd1)" 2>&1); then
	echo "$out"
	fail "usrbd upgrade of a RAM device succeeded"
fi
echo "$out" | grep -q "detach" || {
	echo "$out"
	fail "the RAM refusal does not say to detach"
}
log "ok: RAM device refused: $(echo "$out" | tail -n 1)"
stop_server "$ram_pid"

t0=$(date +%s)
i=0
while [ $i -lt "$upgrades" ]; do
	i=$((i + 1))
	sleep_ms "$(rand_between 300 1500)"
	ackwrite_alive "upgrade $i: the writer stopped before the upgrade"
	before=$(status_field instance)
	adopted=$(grep -c 're-attaching to existing device usrbd0' "$USRBD_TMP/server-usrbd0.log" || true)
	if [ $((i % 2)) -eq 1 ]; then
		# A package replaces the file (a new inode; the old one stays mapped).
		cp "$orig" "$bin/usrbd.new"
		mv "$bin/usrbd.new" "$bin/usrbd"
		how="replaced file"
		out=$("$orig" upgrade --socket "$sk" 2>&1) || {
			echo "$out"
			tail -n 20 "$USRBD_TMP/server-usrbd0.log"
			fail "upgrade $i ($how) failed"
		}
	else
		cp "$orig" "$bin/usrbd-$i"
		how="--binary usrbd-$i"
		out=$("$orig" upgrade --socket "$sk" --binary "$bin/usrbd-$i" 2>&1) || {
			echo "$out"
			tail -n 20 "$USRBD_TMP/server-usrbd0.log"
			fail "upgrade $i ($how) failed"
		}
	fi
	running "$pid" || fail "upgrade $i: the server process $pid is gone"
	[ "$(status_field pid)" = "$pid" ] || fail "upgrade $i: another pid serves"
	[ "$(status_field instance)" != "$before" ] || fail "upgrade $i: the same instance serves"
	now=$(grep -c 're-attaching to existing device usrbd0' "$USRBD_TMP/server-usrbd0.log" || true)
	[ "$now" -eq $((adopted + 1)) ] || fail "upgrade $i: the new binary did not adopt the device"
	ms=$(sed -n 's/.*upgrade: quiesced and flushed in \([0-9]*\) ms.*/\1/p' "$USRBD_TMP/server-usrbd0.log" | tail -n 1)
	log "upgrade $i ($how), t+$(($(date +%s) - t0))s: $out; quiesce ${ms} ms; $(acked_count "$ack") writes acknowledged so far"
done
timeouts=$(kernel_timeouts)
ackwrite_finish_ext4 "$mnt" "$dmesg_from" "during the upgrades"
[ "$timeouts" = 0 ] || fail "the module timed out $timeouts requests during the upgrades"
log "ok: 0 request timeouts"
# A stop (systemd's SIGTERM) during an upgrade must not be dropped with the
# old process image: the upgrade gives way, the server detaches and exits 0.
# The signal comes while the server checks the new binary (a wrapper whose
# --version takes 3 s), so it lands in the upgrade every time.
printf '#!/bin/sh\nif [ "$1" = --version ]; then\n\ttouch "%s"\n\tsleep 3\nfi\nexec "%s" "$@"\n' \
	"$bin/checking" "$orig" >"$bin/usrbd-slow"
chmod 755 "$bin/usrbd-slow"
"$orig" upgrade --socket "$sk" --binary "$bin/usrbd-slow" >"$USRBD_TMP/upgrade-term.out" 2>&1 &
up=$!
wait_until 60 "the server to check the new binary" test -e "$bin/checking"
kill -TERM "$pid"
wait_until 60 "the server to exit after a SIGTERM during an upgrade" not_running "$pid"
rc=0
wait "$pid" || rc=$?
urc=0
wait "$up" || urc=$?
grep -E 'upgrade|SIGTERM|exiting' "$USRBD_TMP/server-usrbd0.log" | tail -n 4
cat "$USRBD_TMP/upgrade-term.out"
[ "$rc" -eq 0 ] || fail "the server exited with status $rc after a SIGTERM during an upgrade"
[ "$urc" -ne 0 ] || fail "usrbd upgrade succeeded although the server was told to exit"
log "ok: SIGTERM during an upgrade: the upgrade failed (exit $urc), the server exited 0"
ext4_image_ackcheck "$img" data "$ack"
figures upgrades="$upgrades" acked="$(acked_count "$ack")" blocks_verified="$ACK_CHECKED" \
	lost=0 writer_io_errors=0 request_timeouts=0 seconds=$(($(date +%s) - t0))
