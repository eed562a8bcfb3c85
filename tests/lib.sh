# Shared helpers for the VM scenarios (tests/scenarios/*.sh), the demo and
# the interactive VM shell. Source it: . "$USRBD_TESTS/lib.sh"
#
# Environment (set by tests/runner.sh from the xtask's plan):
#   USRBD        the usrbd service binary
#   VMKIT        the in-guest helper (uinput panel, ackwrite/ackcheck, fuzz)
#   USRBD_KO     usrbd.ko built for the running kernel
#   USRBD_TESTS  this directory
#   USRBD_RWDIR  host directory, writable, survives a reboot of the VM
#   USRBD_TMP    scratch directory of this scenario (guest tmpfs)
#
# Failures go through `fail`, which prints `FAIL: why` (the runner quotes the
# last such line) and exits non-zero.

USRBD_TMP=${USRBD_TMP:-/tmp/usrbd-scratch}
mkdir -p "$USRBD_TMP"
LIB_PIDS=""
LIB_MOUNTS=""

log() { printf '# %s\n' "$*"; }

fail() {
	printf 'FAIL: %s\n' "$*"
	exit 1
}

# check DESCRIPTION COMMAND...: runs COMMAND, fails with DESCRIPTION if it fails.
check() {
	desc=$1
	shift
	if "$@"; then
		log "ok: $desc"
	else
		fail "$desc"
	fi
}

# Background processes and mounts this scenario made go away on exit, even
# when it fails half-way (the runner cleans up what is left beyond that).
lib_cleanup() {
	for p in $LIB_PIDS; do
		kill -KILL "$p" 2>/dev/null || true
	done
	for m in $LIB_MOUNTS; do
		umount "$m" 2>/dev/null || true
	done
}
trap lib_cleanup EXIT

track() { LIB_PIDS="$LIB_PIDS $1"; }

# The scenario ends the boot: the runner records its result and powers the
# VM off at once, with the server still serving and the filesystem mounted.
power_off_abruptly_after_this() {
	trap - EXIT
	touch "$USRBD_TMP/.power-off-abruptly"
}

# running PID: the process exists and is not a zombie waiting to be reaped.
running() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
not_running() { ! running "$1"; }

# wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s.
wait_until() {
	limit=$1
	desc=$2
	shift 2
	deadline=$(($(date +%s) + limit))
	until "$@" 2>/dev/null; do
		if [ "$(date +%s)" -ge "$deadline" ]; then
			fail "timed out after ${limit}s waiting for: $desc"
		fi
		sleep 0.2
	done
}

load_module() {
	if ! grep -q '^usrbd ' /proc/modules; then
		check "insmod $USRBD_KO" insmod "$USRBD_KO"
	fi
	wait_until 10 "/dev/usrbd-control" test -c /dev/usrbd-control
}

# mount_dev DEV DIR [mount options...]
mount_dev() {
	dev=$1
	dir=$2
	shift 2
	mkdir -p "$dir"
	check "mount $dev on $dir" mount "$@" "$dev" "$dir"
	LIB_MOUNTS="$dir $LIB_MOUNTS"
}

is_mounted() { grep -q "^$1 " /proc/mounts; }

# --- the uinput front panel (vmkit panel) -------------------------------
# Sets PANEL_EVENTS, PANEL_FIFO, LED_STATUS, LED_ERROR, LED_ACTIVITY and
# PANEL_ARGS (the serve flags for this panel's button and LEDs).
start_panel() {
	modprobe uinput 2>/dev/null || true
	PANEL_EVENTS=$USRBD_TMP/leds.events
	PANEL_FIFO=$USRBD_TMP/panel.fifo
	"$VMKIT" panel --name usrbd-test-panel --events "$PANEL_EVENTS" \
		--control "$PANEL_FIFO" >"$USRBD_TMP/panel.out" 2>"$USRBD_TMP/panel.err" &
	PANEL_PID=$!
	track $PANEL_PID
	deadline=$(($(date +%s) + 30))
	until grep -q '^leds ' "$USRBD_TMP/panel.out" 2>/dev/null; do
		if ! running $PANEL_PID || [ "$(date +%s)" -ge "$deadline" ]; then
			cat "$USRBD_TMP/panel.err"
			fail "vmkit panel did not come up"
		fi
		sleep 0.2
	done
	line=$(grep '^leds ' "$USRBD_TMP/panel.out" | head -n 1)
	LED_STATUS=$(echo "$line" | tr ' ' '\n' | sed -n 's/^status=//p')
	LED_ERROR=$(echo "$line" | tr ' ' '\n' | sed -n 's/^error=//p')
	LED_ACTIVITY=$(echo "$line" | tr ' ' '\n' | sed -n 's/^activity=//p')
	[ -d "$LED_STATUS" ] && [ -d "$LED_ERROR" ] && [ -d "$LED_ACTIVITY" ] ||
		fail "panel LEDs missing: $line"
	PANEL_ARGS="--button input:name=usrbd-test-panel:KEY_POWER --led-status sysfs:$LED_STATUS --led-error sysfs:$LED_ERROR --led-activity sysfs:$LED_ACTIVITY"
	log "panel: $line"
}

# press_button MS: key down, MS milliseconds, key up.
press_button() {
	log "pressing the button for $1 ms"
	echo "press $1" >"$PANEL_FIFO"
}

# last_led NAME: the last recorded level (0/1) of LED NAME, empty if none.
last_led() { awk -v n="$1" '$2 == n { v = $3 } END { print v }' "$PANEL_EVENTS"; }

# --- the service ----------------------------------------------------------
sock() { echo "/run/usrbd/$1.sock"; }

# start_server NAME SERVE-ARGS...: starts `usrbd serve --name NAME ...` in
# the background and waits for "usrbd: serving /dev/NAME". Sets SERVER_PID.
start_server() {
	name=$1
	shift
	slog=$USRBD_TMP/server-$name.log
	log "usrbd serve --name $name $*"
	"$USRBD" serve --name "$name" "$@" >"$slog" 2>&1 &
	SERVER_PID=$!
	track $SERVER_PID
	deadline=$(($(date +%s) + 60))
	until grep -q "usrbd: serving /dev/$name" "$slog"; do
		if ! running $SERVER_PID; then
			cat "$slog"
			fail "usrbd serve --name $name exited before serving"
		fi
		if [ "$(date +%s)" -ge "$deadline" ]; then
			cat "$slog"
			fail "usrbd serve --name $name not serving after 60s"
		fi
		sleep 0.2
	done
	wait_until 10 "/dev/$name" test -b "/dev/$name"
}

# stop_server PID: SIGTERM (detach, then exit) and require exit status 0.
stop_server() {
	kill -TERM "$1"
	deadline=$(($(date +%s) + 60))
	while running "$1"; do
		[ "$(date +%s)" -lt "$deadline" ] || fail "server $1 still running 60s after SIGTERM"
		sleep 0.2
	done
	rc=0
	wait "$1" || rc=$?
	[ "$rc" -eq 0 ] || fail "server $1 exited with status $rc after SIGTERM"
	log "ok: server $1 exited 0 after SIGTERM"
}

status_json() { "$USRBD" status --socket "$(sock "$1")" --json; }

# jfield NAME JQ-EXPR: one field of `usrbd status --json`.
jfield() { status_json "$1" | jq -r "$2"; }

state_is() { [ "$(jfield "$1" .state)" = "$2" ]; }

wait_state() { wait_until "${3:-60}" "$1 in state $2" state_is "$1" "$2"; }

listed() { "$USRBD" list | grep -q "^$1 "; }

# Device NAME is gone: no node, no sysfs entry, not in `usrbd list`.
check_gone() {
	wait_until 20 "/dev/$1 gone" test ! -e "/dev/$1"
	check "/sys/block/$1 gone" test ! -e "/sys/block/$1"
	if listed "$1"; then
		"$USRBD" list
		fail "usrbd list still shows $1"
	fi
	log "ok: $1 destroyed"
}

# --- data -------------------------------------------------------------------
# make_files DIR: a few files of assorted sizes, random contents.
make_files() {
	mkdir -p "$1/sub"
	for i in 1 2 3 4 5 6 7; do
		dd if=/dev/urandom of="$1/file$i" bs=4096 count=$((i * i * 11)) status=none
	done
	dd if=/dev/urandom of="$1/sub/odd-size" bs=1 count=12345 status=none
	dd if=/dev/urandom of="$1/sub/big" bs=1M count=6 status=none
}

# tree_sums DIR: sha256 of every file under DIR, by relative path.
tree_sums() { (cd "$1" && find . -type f | LC_ALL=C sort | xargs -r sha256sum); }

# same_files SUMS DIR: DIR holds exactly the files listed in SUMS.
same_files() {
	tree_sums "$2" >"$USRBD_TMP/actual.sums"
	if ! diff -u "$1" "$USRBD_TMP/actual.sums"; then
		fail "files under $2 differ from what was written"
	fi
	log "ok: $(wc -l <"$1") files under $2 match their checksums"
}

# image_holds_files IMAGE SUMS: an ext4 image (backing file or saved RAM
# image) is clean and holds exactly the files of SUMS; mounted read-only.
image_holds_files() {
	check "e2fsck -fn $1 clean" e2fsck -fn "$1"
	# Without the loop module, mount -o loop fails with EPERM.
	modprobe loop 2>/dev/null || true
	mount_dev "$1" "$USRBD_TMP/image" -o ro,loop
	same_files "$2" "$USRBD_TMP/image"
	umount "$USRBD_TMP/image"
}

# write_read_check DEV: 4 MiB of random data through DEV (direct I/O), read
# back identical.
write_read_check() {
	dd if=/dev/urandom of="$USRBD_TMP/pattern" bs=1M count=4 status=none
	check "write 4 MiB to $1" dd if="$USRBD_TMP/pattern" of="$1" bs=1M oflag=direct conv=fsync status=none
	dd if="$1" of="$USRBD_TMP/readback" bs=1M count=4 iflag=direct status=none
	check "4 MiB read back from $1 identical" cmp "$USRBD_TMP/pattern" "$USRBD_TMP/readback"
}

# No task in uninterruptible sleep (D) for 15 s in a row.
check_no_d_state() {
	deadline=$(($(date +%s) + 15))
	while :; do
		stuck=""
		for stat in /proc/[0-9]*/stat; do
			st=$(sed 's/.*) //' "$stat" 2>/dev/null | cut -d' ' -f1) || continue
			[ "$st" = D ] && stuck="$stuck ${stat#/proc/}"
		done
		[ -z "$stuck" ] && break
		if [ "$(date +%s)" -ge "$deadline" ]; then
			for s in $stuck; do
				pid=${s%/stat}
				echo "D: $pid $(cat /proc/$pid/comm 2>/dev/null) wchan=$(cat /proc/$pid/wchan 2>/dev/null)"
				cat "/proc/$pid/stack" 2>/dev/null
			done
			fail "tasks stuck in D state:$stuck"
		fi
		sleep 1
	done
	log "ok: no task in D state"
}

# --- the detach round trip shared by several scenarios ---------------------
# detach_round_trip cli|button ram|file: serve, mkfs.ext4, mount, write
# files; detach through `usrbd detach` or a short button press; then the
# filesystem is unmounted, the device destroyed, and the backing file or
# saved RAM image holds the same files. With the button, the LED sequence
# serving -> detaching -> safe is read back from the uinput LED events.
detach_round_trip() {
	how=$1
	backend=$2
	load_module
	image=$USRBD_TMP/backing.img
	panel=""
	if [ "$how" = button ]; then
		start_panel
		panel=$PANEL_ARGS
	fi
	case "$backend" in
	ram) store="--backend ram --image $image" ;;
	file) store="--backend file --file $image" ;;
	esac
	# shellcheck disable=SC2086 # word splitting of the flag lists is meant
	start_server usrbd0 --size 64MiB $store $panel
	srv=$SERVER_PID
	check "mkfs.ext4 /dev/usrbd0" mkfs.ext4 -q -F /dev/usrbd0
	mount_dev /dev/usrbd0 "$USRBD_TMP/mnt"
	make_files "$USRBD_TMP/mnt"
	tree_sums "$USRBD_TMP/mnt" >"$USRBD_TMP/expected.sums"
	if [ "$how" = button ]; then
		press_button 200
		wait_state usrbd0 safe 90
	else
		out=$("$USRBD" detach --socket "$(sock usrbd0)") || fail "usrbd detach failed: $out"
		log "usrbd detach: $out"
		check "state is safe after usrbd detach" state_is usrbd0 safe
	fi
	if is_mounted /dev/usrbd0; then
		fail "/dev/usrbd0 still mounted after the detach"
	fi
	log "ok: /dev/usrbd0 unmounted by the detach"
	check_gone usrbd0
	image_holds_files "$image" "$USRBD_TMP/expected.sums"
	if [ "$how" = button ]; then
		check "LED sequence serving,detaching,safe" \
			"$VMKIT" leds-check --events "$PANEL_EVENTS" --expect serving,detaching,safe
	fi
	stop_server $srv
}

# --- reliability scenarios (tests/scenarios/rel_*.sh) ----------------------
# Each runs a short version by default (CI) and a long one when the plan sets
# USRBD_SOAK=1 (`cargo xtask soak`), and prints one line the soak collects:
#   FIGURES <scenario> key=value ...

# soak_or SHORT LONG: the value for this run. A soak may be scaled down
# (USRBD_SOAK_PERCENT, from `cargo xtask soak --percent N`), never below SHORT.
soak_or() {
	if [ "${USRBD_SOAK:-0}" = 1 ]; then
		v=$(($2 * ${USRBD_SOAK_PERCENT:-100} / 100))
		[ "$v" -gt "$1" ] || v=$1
		echo "$v"
	else
		echo "$1"
	fi
}

# rand_between MIN MAX: a random integer in [MIN, MAX] (dash has no $RANDOM).
rand_between() {
	r=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
	echo $(($1 + r % ($2 - $1 + 1)))
}

# sleep_ms MS
sleep_ms() { sleep "$(awk -v m="$1" 'BEGIN { printf "%.3f", m / 1000 }')"; }

# figures KEY=VALUE...: the scenario's FIGURES line (name from the script).
figures() {
	echo "FIGURES $(basename "$0" .sh) $*"
}

# start_allocator: a process that allocates memory until it is killed, in
# the background (ALLOC_PID).
start_allocator() {
	python3 -c '
held = []
while True:
    held.append(b"\x5a" * (8 << 20))
' >/dev/null 2>&1 &
	ALLOC_PID=$!
	track $ALLOC_PID
}

# ackwrite_start DEV LOG SPAN: vmkit ackwrite in the background (ACK_PID).
ackwrite_start() {
	"$VMKIT" ackwrite --dev "$1" --log "$2" --block 4096 --span "$3" \
		>>"$USRBD_TMP/ackwrite.out" 2>&1 &
	ACK_PID=$!
	track $ACK_PID
}

# ackwrite_stop: SIGTERM to ackwrite, wait for it; its exit status in ACK_RC
# (0 clean stop, 2 stopped by an I/O error).
# shellcheck disable=SC2034 # ACK_RC is for the scenarios
ackwrite_stop() {
	kill -TERM "$ACK_PID" 2>/dev/null || true
	wait_until 60 "ackwrite $ACK_PID to stop" not_running "$ACK_PID"
	ACK_RC=0
	wait "$ACK_PID" 2>/dev/null || ACK_RC=$?
}

# ackwrite_alive WHAT: fails with WHAT (and ackwrite's output) unless the
# writer started by ackwrite_start still runs.
ackwrite_alive() {
	running "$ACK_PID" || {
		cat "$USRBD_TMP/ackwrite.out"
		fail "$1"
	}
}

# ackwrite_finish_ext4 MNT DMESG_FROM WHEN: the writer must still run and
# stop with no I/O error seen; MNT is unmounted, and no ext4 or I/O error
# may be in the kernel log from line DMESG_FROM on ("errors WHEN").
ackwrite_finish_ext4() {
	sleep 1
	ackwrite_alive "the writer stopped (an I/O error reached it)"
	ackwrite_stop
	cat "$USRBD_TMP/ackwrite.out"
	[ "$ACK_RC" -eq 0 ] || fail "the writer saw an I/O error (exit $ACK_RC)"
	check "umount" umount "$1"
	errors=$(dmesg | tail -n +"$2" | grep -E 'EXT4-fs (error|warning)|I/O error|Buffer I/O' || true)
	if [ -n "$errors" ]; then
		echo "$errors"
		fail "the kernel logged errors $3"
	fi
	log "ok: no ext4 or I/O error in dmesg"
}

# ext4_image_ackcheck IMAGE FILE LOG: e2fsck of the ext4 IMAGE is clean and
# every block acknowledged in LOG is in FILE on it (ACK_CHECKED).
ext4_image_ackcheck() {
	check "e2fsck -fn clean" e2fsck -fn "$1"
	mount_dev "$1" "$USRBD_TMP/image" -o ro,loop
	ackcheck_image "$USRBD_TMP/image/$2" "$3"
	umount "$USRBD_TMP/image"
}

# ackcheck_image IMAGE LOG: every acknowledged block is on IMAGE; sets
# ACK_CHECKED to the number of blocks checked.
ackcheck_image() {
	if ! out=$("$VMKIT" ackcheck --image "$1" --log "$2" --block 4096 2>&1); then
		echo "$out"
		fail "acknowledged writes missing from $1"
	fi
	# shellcheck disable=SC2034 # for the scenarios
	ACK_CHECKED=$(echo "$out" | sed -n 's/^checked \([0-9]*\) blocks.*/\1/p' | tail -n 1)
}

# acked_count LOG: complete lines in an ackwrite log.
acked_count() {
	n=$(grep -c '^[0-9]* [0-9]* [0-9]*$' "$1" 2>/dev/null) || true
	echo "${n:-0}"
}

# --- USB drive export (usb_* scenarios; added by the USB export work) -------
# Gadget and host in one guest: dummy_hcd is both the UDC the gadget binds to
# and the host controller that enumerates it as a SCSI disk.
USB_GADGET_DIR=/sys/kernel/config/usb_gadget/usrbd

# usb_host_setup: loads the modules, mounts configfs, and arranges that the
# gadget goes away when the scenario exits (before the runner destroys
# devices: a bound gadget keeps /dev/usrbd0 open).
usb_host_setup() {
	for m in dummy_hcd libcomposite usb_f_mass_storage usb-storage sd_mod; do
		check "modprobe $m" modprobe "$m"
	done
	grep -q ' /sys/kernel/config configfs ' /proc/mounts ||
		check "mount configfs" mount -t configfs none /sys/kernel/config
	trap 'lib_cleanup; usb_gadget_remove' EXIT
	log "udc: $(ls /sys/class/udc)"
}

# usb_gadget_remove: unbinds and removes a gadget the service left (killed).
usb_gadget_remove() {
	[ -d "$USB_GADGET_DIR" ] || return 0
	echo "" >"$USB_GADGET_DIR/UDC" 2>/dev/null || true
	rm -f "$USB_GADGET_DIR/configs/c.1/mass_storage.usb0"
	for d in configs/c.1/strings/0x409 configs/c.1 functions/mass_storage.usb0 strings/0x409; do
		rmdir "$USB_GADGET_DIR/$d" 2>/dev/null || true
	done
	rmdir "$USB_GADGET_DIR" 2>/dev/null || true
}

# usb_disk VENDOR: prints sdX, the removable USB SCSI disk whose INQUIRY
# vendor is VENDOR; fails if there is none.
usb_disk() {
	for d in /sys/block/sd*; do
		[ -e "$d/removable" ] || continue
		[ "$(cat "$d/removable")" = 1 ] || continue
		[ "$(sed 's/ *$//' "$d/device/vendor")" = "$1" ] || continue
		[ "$(lsblk -dno TRAN "/dev/${d##*/}" | tr -d ' ')" = usb ] || continue
		echo "${d##*/}"
		return 0
	done
	return 1
}

usb_disk_present() { usb_disk "$1" >/dev/null; }

# wait_usb_disk VENDOR BYTES: waits for that disk with a medium of BYTES;
# sets USB_SD (sdX). Media events are polled every 200 ms from then on, as
# a desktop host does, so an eject shows up without I/O.
wait_usb_disk() {
	wait_until 60 "a removable USB disk from vendor $1" usb_disk_present "$1"
	USB_SD=$(usb_disk "$1")
	echo 200 >"/sys/block/$USB_SD/events_poll_msecs" 2>/dev/null || true
	wait_until 30 "/dev/$USB_SD with a $2-byte medium" usb_medium_is "$USB_SD" "$2"
	log "ok: host side sees /dev/$USB_SD: removable=1 vendor=$1 TRAN=usb size=$2"
}

# usb_medium_is SDX BYTES: the host sees a medium of BYTES (0: none).
usb_medium_is() { [ "$(($(cat "/sys/block/$1/size") * 512))" -eq "$2" ]; }

# usb_medium_gone SDX: capacity 0 and a read fails with "No medium found".
usb_medium_gone() {
	usb_medium_is "$1" 0 || return 1
	if err=$(dd if="/dev/$1" of=/dev/null bs=512 count=1 iflag=direct 2>&1); then
		return 1
	fi
	case "$err" in *"No medium found"*) return 0 ;; esac
	echo "$err"
	return 1
}

# --- crash consistency ---------------------------------------------------------
# crash_payload: 5 MiB of deterministic pseudo-random bytes on stdout, so the
# check after a power cut needs no side file that the cut could lose.
crash_payload() {
	openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass pass:usrbd-crash </dev/zero 2>/dev/null |
		head -c 5242880
}

# one_partition NAME: an MBR with one Linux partition from sector 2048
# (1 MiB) to the end of /dev/NAME, re-read, and /dev/NAMEp1 present.
one_partition() {
	printf '\203' >"$USRBD_TMP/type"
	{
		dd if=/dev/zero bs=446 count=1 status=none
		printf '\000\000\000\000'
		cat "$USRBD_TMP/type"
		printf '\000\000\000\000\010\000\000\000\370\001\000'
		dd if=/dev/zero bs=48 count=1 status=none
		printf '\125\252'
	} >"$USRBD_TMP/mbr"
	check "write the partition table" dd if="$USRBD_TMP/mbr" of="/dev/$1" bs=512 count=1 oflag=direct conv=fsync status=none
	check "re-read the partition table" blockdev --rereadpt "/dev/$1"
	wait_until 10 "/dev/${1}p1" test -b "/dev/${1}p1"
}
