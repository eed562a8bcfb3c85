#!/bin/sh
# In-guest scenario runner (started by `cargo xtask test` through virtme-ng).
#
#   sh tests/runner.sh PLAN
#
# PLAN is a shell fragment written by the xtask: the environment of the
# scenarios (see tests/lib.sh) plus GROUP, RESULTS, LOGS and SCENARIOS (one
# `TIMEOUT_S:PATH` per line, in run order).
#
# For each scenario: record dmesg, run it with a timeout in a scratch dir,
# clean up whatever it left (processes, mounts, devices, the module), diff
# dmesg, and append one tab-separated line to RESULTS (and the console):
#   USRBD-RESULT  name  PASS|FAIL  seconds  reason
# Output goes to LOGS/name.out, the dmesg of the scenario to LOGS/name.dmesg.
# A scenario that creates "$USRBD_TMP/.power-off-abruptly" ends the boot:
# its result is written, then the VM is stopped with no sync and no cleanup.
# One that creates "$USRBD_TMP/.host-kill" ends it harder: after its result,
# the line USRBD-HOST-KILL asks the xtask to SIGKILL QEMU (sysrq o follows if
# nobody does within 30 s, e.g. in `cargo xtask vm`).
set -u

. "$1"

# Kernel lines that fail the scenario during which they appeared.
BAD_DMESG='BUG:|WARNING:|Oops|general protection fault|Kernel panic|hung task|blocked for more than|INFO: task .* blocked|possible circular locking|possible recursive locking|inconsistent lock state|suspicious RCU usage|UBSAN:|KASAN:|list_add corruption|list_del corruption|refcount_t:|soft lockup|hard LOCKUP|rcu_sched self-detected stall|rcu: INFO:'

PATH="$(dirname "$USRBD"):$PATH"
export PATH
export RUST_LOG="${RUST_LOG:-info}"
export RUST_BACKTRACE=1
mkdir -p "$LOGS" "$(dirname "$RESULTS")"
: >>"$RESULTS"

# A hung task shows up in dmesg within a scenario's timeout.
echo 60 >/proc/sys/kernel/hung_task_timeout_secs 2>/dev/null || true
modprobe uinput 2>/dev/null || true
modprobe loop 2>/dev/null || true

now() { date +%s.%N; }

result() { # name status seconds reason
	line=$(printf 'USRBD-RESULT\t%s\t%s\t%s\t%s' "$1" "$2" "$3" "$4")
	echo "$line" >>"$RESULTS"
	sync "$RESULTS" 2>/dev/null || true
	echo "$line"
}

# Leaves nothing of a scenario behind: its processes, mounts and loop
# devices on usrbd, the devices, the module. Prints what failed.
cleanup() {
	rc=0
	for dir in /proc/[0-9]*; do
		pid=${dir#/proc/}
		[ "$pid" = "$$" ] && continue
		exe=$(readlink "$dir/exe" 2>/dev/null) || continue
		case "$exe" in
		"$USRBD" | "$VMKIT" | */fio) kill -KILL "$pid" 2>/dev/null ;;
		esac
	done
	sleep 1
	for m in $(awk '$1 ~ /^\/dev\/(usrbd|loop)/ {print $2}' /proc/mounts | sort -r); do
		# An umount stuck in D state ignores signals: wait at most 60 s,
		# then detach lazily, report it, and go on with the next scenario.
		umount "$m" 2>/dev/null &
		umounter=$!
		i=0
		while kill -0 "$umounter" 2>/dev/null && [ "$i" -lt 60 ]; do
			sleep 1
			i=$((i + 1))
		done
		if kill -0 "$umounter" 2>/dev/null; then
			echo "cleanup: umount $m still running after 60 s"
			umount -l "$m" 2>/dev/null || true
			rc=1
		elif ! wait "$umounter"; then
			umount -l "$m" 2>/dev/null || true
		fi
	done
	losetup -D 2>/dev/null || true
	if [ -c /dev/usrbd-control ]; then
		for dev in /sys/block/usrbd*; do
			[ -e "$dev" ] || continue
			devname=${dev##*/}
			if ! timeout 60 "$USRBD" destroy --force --name "$devname" >/dev/null 2>&1; then
				echo "cleanup: usrbd destroy --force --name $devname failed"
				rc=1
			fi
		done
	fi
	if grep -q '^usrbd ' /proc/modules; then
		i=0
		until rmmod usrbd 2>/dev/null; do
			i=$((i + 1))
			if [ "$i" -ge 20 ]; then
				echo "cleanup: rmmod usrbd failed: $(rmmod usrbd 2>&1); refcnt $(cat /sys/module/usrbd/refcnt 2>/dev/null)"
				rc=1
				break
			fi
			sleep 0.5
		done
	fi
	return $rc
}

echo "USRBD-RUNNER group=$GROUP kernel=$(uname -r) cpus=$(nproc)"
echo "$SCENARIOS" | while IFS=: read -r limit script; do
	[ -n "$script" ] || continue
	name=$(basename "$script" .sh)
	out="$LOGS/$name.out"
	export USRBD_TMP="/tmp/usrbd-test/$name"
	rm -rf "$USRBD_TMP"
	mkdir -p "$USRBD_TMP"
	before=$(dmesg | wc -l)
	start=$(now)
	echo "== $name (group $GROUP, timeout ${limit}s)" >&2
	# timeout(1) runs the script in a process group of its own and signals
	# the whole group when the limit passes.
	if [ -x "$script" ]; then
		timeout -k 10 "$limit" "$script" >"$out" 2>&1 </dev/null
	else
		timeout -k 10 "$limit" sh "$script" >"$out" 2>&1 </dev/null
	fi
	rc=$?
	secs=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
	reason=""
	if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
		reason="timed out after ${limit}s"
	elif [ "$rc" -ne 0 ]; then
		reason="exit $rc: $(grep -E '^FAIL:' "$out" | tail -n 1 | cut -c1-200)"
	fi
	crash=0
	[ -e "$USRBD_TMP/.power-off-abruptly" ] && [ "$rc" -eq 0 ] && crash=1
	[ -e "$USRBD_TMP/.host-kill" ] && [ "$rc" -eq 0 ] && crash=2
	if [ "$crash" -eq 0 ]; then
		echo "--- runner cleanup" >>"$out"
		if ! cleanup >>"$out" 2>&1; then
			[ -z "$reason" ] && reason="cleanup after the scenario failed: $(grep '^cleanup:' "$out" | head -n 1 | cut -c1-200)"
		fi
	fi
	dmesg | awk -v n="$before" 'NR > n' >"$LOGS/$name.dmesg"
	[ -s "$LOGS/$name.dmesg" ] || dmesg | tail -n 40 >"$LOGS/$name.dmesg"
	bad=$(dmesg | awk -v n="$before" 'NR > n' | grep -E "$BAD_DMESG" | head -n 1 | cut -c1-200)
	[ -n "$bad" ] && [ -z "$reason" ] && reason="dmesg: $bad"
	if [ -z "$reason" ]; then
		result "$name" PASS "$secs" ""
	else
		result "$name" FAIL "$secs" "$(echo "$reason" | tr '\t\n' '  ')"
	fi
	if [ "$crash" -eq 2 ]; then
		echo "== $name asked the host to kill the VM" >&2
		echo "USRBD-HOST-KILL"
		sleep 30
		crash=1
	fi
	if [ "$crash" -eq 1 ]; then
		echo "== $name asked for an abrupt power-off: sysrq o" >&2
		echo o >/proc/sysrq-trigger
		sleep 60
	fi
done
echo "USRBD-RUNNER done"
