# Helpers for the arm64 VM scenarios (sourced by /init).
#
# Lines starting with "@@USRBD " are read by the host (xtask/src/cross/vm.rs):
#   @@USRBD result NAME pass|fail [REASON]  one per scenario file
#   @@USRBD press TAG                       the host presses the button:
#                                           QMP system_powerdown pulses PL061
#                                           line 3 high for ~100 ms
#   @@USRBD serving|idle|safe|stop TAG      times the host checks the LED
#                                           trace against (status = line 4,
#                                           error = line 5)
#   @@USRBD done
#
# A scenario is a file sourced in a subshell; `fail` ends it. Services keep
# running between scenarios: their pid is in /tmp/TAG.pid, log in /tmp/TAG.log.

MIB=1048576
SIZE_MIB=64
SOCK=/run/usrbd/usrbd0.sock
DEV=/dev/usrbd0

# Straight to the console: scenario output is buffered until it ends, and the
# host must see a press request while the scenario waits for its effect.
mark() { echo "@@USRBD $*" > /dev/console; }

fail() {
	echo "$*" > /tmp/why
	exit 1
}

run_scenario() {
	name=$(basename "$1" .sh)
	name=${name#[0-9]*-}
	rm -f /tmp/why
	echo "--- $name"
	if (. "$1") > /tmp/out 2>&1; then
		sed 's/^/  | /' /tmp/out
		mark result "$name" pass
	else
		sed 's/^/  | /' /tmp/out
		mark result "$name" fail "$(cat /tmp/why 2>/dev/null || echo 'exited non-zero')"
	fi
}

# wait_for SECONDS CMD...: true once CMD succeeds, false after SECONDS.
wait_for() {
	end=$(($(date +%s) + $1))
	shift
	while ! "$@"; do
		[ "$(date +%s)" -lt "$end" ] || return 1
		sleep 0.1
	done
}

sha() { sha256sum | cut -d' ' -f1; }

# check_region FILE_OR_DEV OFFSET_MIB PATTERN WHAT: the bytes at OFFSET equal
# PATTERN, read after dropping the page cache so they come from the backend.
check_region() {
	blockdev --flushbufs "$1" 2>/dev/null
	echo 3 > /proc/sys/vm/drop_caches
	count=$(($(stat -c %s "$3") / MIB))
	want=$(sha < "$3")
	got=$(dd if="$1" bs=1M skip="$2" count="$count" 2>/dev/null | sha)
	[ "$want" = "$got" ] || fail "$4: $count MiB at $2 MiB of $1 differ from what was written"
	echo "$4: $count MiB at $2 MiB match (sha256 $want)"
}

# check_zero FILE OFFSET_MIB COUNT_MIB WHAT
check_zero() {
	want=$(dd if=/dev/zero bs=1M count="$3" 2>/dev/null | sha)
	got=$(dd if="$1" bs=1M skip="$2" count="$3" 2>/dev/null | sha)
	[ "$want" = "$got" ] || fail "$4: $3 MiB at $2 MiB of $1 are not zero"
}

# put_pattern TAG OFFSET_MIB COUNT_MIB: random data to the device, synced,
# then read back. The pattern stays in /tmp/TAG.pat.
put_pattern() {
	dd if=/dev/urandom of="/tmp/$1.pat" bs=1M count="$3" 2>/dev/null
	dd if="/tmp/$1.pat" of="$DEV" bs=1M seek="$2" conv=fsync 2>/dev/null ||
		fail "writing $3 MiB to $DEV failed"
	check_region "$DEV" "$2" "/tmp/$1.pat" "read back through the $1 service"
}

# json_field JSON KEY: the first value of KEY (a number or a plain string).
status_json() { "/bin/usrbd-$1" status --socket "$SOCK" --json 2>&1 | tr -d ' \n'; }
json_field() {
	echo "$1" | grep -o "\"$2\":\"\{0,1\}[a-z0-9_]*" | head -n 1 | sed 's/.*://; s/"//g'
}

# json_top JSON: JSON with every nested object replaced by `_`, so a key
# (such as "state", also found in "kernel") is looked up at the top level only.
json_top() {
	j=$1
	while :; do
		k=$(echo "$j" | sed 's/\(.\){[^{}]*}/\1_/g')
		[ "$k" = "$j" ] && break
		j=$k
	done
	echo "$j"
}

state_is() { [ "$(json_field "$(json_top "$(status_json "$1")")" state)" = "$2" ]; }

serving_or_gone() {
	grep -q "usrbd: serving $DEV" "/tmp/$1.log" || ! kill -0 "$(cat "/tmp/$1.pid")" 2>/dev/null
}

# serve TAG IMAGE: start /bin/usrbd-TAG serving a 64 MiB RAM device with the
# PL061 panel, and wait until it serves.
serve() {
	RUST_LOG=info "/bin/usrbd-$1" serve --name usrbd0 --size "${SIZE_MIB}MiB" \
		--backend ram --image "$2" --socket "$SOCK" \
		--button gpio:/dev/gpiochip0:3 \
		--led-status gpio:/dev/gpiochip0:4 --led-error gpio:/dev/gpiochip0:5 \
		> "/tmp/$1.log" 2>&1 &
	echo $! > "/tmp/$1.pid"
	wait_for 30 serving_or_gone "$1"
	if ! grep -q "usrbd: serving $DEV" "/tmp/$1.log"; then
		cat "/tmp/$1.log"
		kill -0 "$(cat "/tmp/$1.pid")" 2>/dev/null ||
			fail "the $1 service exited before serving"
		fail "the $1 service did not log 'usrbd: serving $DEV' within 30 s"
	fi
	mark serving "$1"
	[ -b "$DEV" ] || fail "$DEV is not a block device"
	size=$(blockdev --getsize64 "$DEV")
	[ "$size" = $((SIZE_MIB * MIB)) ] || fail "$DEV has $size bytes, want $((SIZE_MIB * MIB))"
}

# check_served TAG MIB: the service's own counters saw at least MIB written.
check_served() {
	json=$(status_json "$1")
	echo "status: $json"
	state=$(json_field "$(json_top "$json")" state)
	[ "$state" = serving ] || fail "status state is '$state', want serving"
	written=$(json_field "$json" bytes_written)
	[ "${written:-0}" -ge $(($2 * MIB)) ] ||
		fail "service counted ${written:-no} bytes written, want >= $2 MiB"
}

# press_and_detach TAG: a button press detaches: the device goes away and the
# service reports "safe".
press_and_detach() {
	[ -b "$DEV" ] || fail "no $DEV to detach"
	kill -0 "$(cat "/tmp/$1.pid" 2>/dev/null)" 2>/dev/null || fail "the $1 service is not running"
	mark idle "$1"
	sleep 1.5 # the host checks the status LED is steady on meanwhile
	mark press "$1"
	wait_for 30 [ ! -e "$DEV" ] || fail "$DEV still present 30 s after the button press"
	wait_for 10 state_is "$1" safe || fail "state is not safe after detach: $(status_json "$1")"
	mark safe "$1"
	"/bin/usrbd-$1" list > /tmp/list 2>&1 || fail "usrbd list failed: $(cat /tmp/list)"
	! grep -q usrbd0 /tmp/list || fail "the module still lists usrbd0: $(cat /tmp/list)"
}

# stop_service TAG: SIGTERM in state safe; it must exit within 10 s.
stop_service() {
	sleep 1 # the host checks the status LED stays off meanwhile
	mark stop "$1"
	pid=$(cat "/tmp/$1.pid")
	kill -TERM "$pid"
	wait_for 10 eval "! kill -0 $pid 2>/dev/null" || fail "the $1 service did not exit on SIGTERM"
	echo "--- /tmp/$1.log"
	cat "/tmp/$1.log"
}

# check_image IMAGE: the saved RAM image has the device's size.
check_image() {
	[ -f "$1" ] || fail "no RAM image saved at $1"
	size=$(stat -c %s "$1")
	[ "$size" = $((SIZE_MIB * MIB)) ] || fail "$1 has $size bytes, want $((SIZE_MIB * MIB))"
}
