#!/bin/sh
# Proves (first half, see rel_power_cut_check): files written and fsynced on
# an ext4 over a file-backed device, plus vmkit ackwrite (write + fdatasync,
# logged once acknowledged) on a second device, then the VM is killed from
# the host (SIGKILL of QEMU: no detach, no sync, no guest shutdown) while
# unsynced writes are still going on. Backing files and the ackwrite log
# live in the host-backed rw dir, which outlives the VM.
# group: rel
# order: 99
# timeout: 240
# soak-timeout: 240
set -eu
. "$USRBD_TESTS/lib.sh"

pc=$USRBD_RWDIR/powercut
rm -rf "$pc"
mkdir -p "$pc"
load_module
start_server usrbd0 --size 64MiB --backend file --file "$pc/disk.img"
srv0=$SERVER_PID
start_server usrbd1 --size 16MiB --backend file --file "$pc/raw.img"
check "mkfs.ext4" mkfs.ext4 -q -F /dev/usrbd0
mnt=$USRBD_TMP/mnt
mkdir -p "$mnt"
# Not mount_dev: that unmounts (and so syncs) when this script exits.
check "mount /dev/usrbd0" mount /dev/usrbd0 "$mnt"
# Small files: the backing files sit on 9p, slow under TCG.
mkdir -p "$mnt/synced"
for n in 1 2 3 4 5 6 7 8; do
	dd if=/dev/urandom of="$mnt/synced/file$n" bs=4k count=$((n * 8)) status=none
done
# Twice (CI run and soak, both after rel_device_churn) this syncfs never
# returned and nothing more reached the backing file: bound it and show why.
sync -f "$mnt" &
syncer=$!
deadline=$(($(date +%s) + 120))
while running $syncer; do
	if [ "$(date +%s)" -ge $deadline ]; then
		# Every thread, not only /proc/PID: the server's workers are threads.
		for st in /proc/[0-9]*/task/[0-9]*/stat; do
			[ "$(sed 's/.*) //' "$st" 2>/dev/null | cut -d' ' -f1)" = D ] || continue
			t=${st%/stat}
			echo "D: ${t#/proc/} $(cat "$t/comm" 2>/dev/null)"
			cat "$t/stack" 2>/dev/null
		done
		for t in /proc/"$srv0"/task/*; do
			echo "server thread ${t##*/}: $(sed 's/.*) //' "$t/stat" | cut -d' ' -f1) wchan=$(cat "$t/wchan" 2>/dev/null)"
			cat "$t/stack" 2>/dev/null
		done
		# blk-mq's own view: each busy request's state, flags and tag.
		mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug 2>/dev/null || true
		for f in /sys/kernel/debug/block/usrbd0/hctx*/busy /sys/kernel/debug/block/usrbd0/hctx*/dispatch \
			/sys/kernel/debug/block/usrbd0/state /sys/kernel/debug/block/usrbd0/requeue_list; do
			if [ -e "$f" ]; then echo "$f:"; cat "$f"; fi
		done
		"$USRBD" status --socket "$(sock usrbd0)" --json 2>&1 | head -c 2000
		tail -n 20 "$USRBD_TMP/server-usrbd0.log"
		fail "syncfs of the ext4 on usrbd0 (backing file on 9p) still running after 120 s"
	fi
	sleep 1
done
wait $syncer || fail "syncfs of the ext4 on usrbd0 failed"
tree_sums "$mnt/synced" >"$pc/expected.sums"
sync "$pc/expected.sums"

# Writers that outlive this script, so the cut lands mid-write. Not
# tracked (lib.sh would stop them at exit); they stop by themselves after
# 60 s in case the VM is not cut.
"$VMKIT" ackwrite --dev /dev/usrbd1 --log "$pc/ack.log" --block 4096 --seconds 60 \
	>"$USRBD_TMP/ackwrite.out" 2>&1 &
(
	end=$(($(date +%s) + 60))
	n=0
	while [ "$(date +%s)" -lt $end ]; do
		n=$((n + 1))
		dd if=/dev/urandom of="$mnt/unsynced-$((n % 8))" bs=64k count=1 status=none 2>/dev/null || true
	done
) >/dev/null 2>&1 &
sleep 3
# The last word before the cut: one more file, fsynced.
dd if=/dev/urandom of="$mnt/synced/last" bs=64k count=2 conv=fsync status=none
(cd "$mnt/synced" && sha256sum ./last) >>"$pc/expected.sums"
LC_ALL=C sort -k2 "$pc/expected.sums" -o "$pc/expected.sums"
sync "$pc/expected.sums"
[ "$(acked_count "$pc/ack.log")" -gt 0 ] || {
	cat "$USRBD_TMP/ackwrite.out"
	fail "ackwrite got nothing acknowledged in 3 s"
}
log "fsynced $(wc -l <"$pc/expected.sums") files; $(acked_count "$pc/ack.log") ackwrite blocks acknowledged"
# The runner records this result, then asks the host to kill the VM.
touch "$USRBD_TMP/.host-kill"
