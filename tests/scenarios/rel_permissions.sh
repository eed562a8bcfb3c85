#!/bin/sh
# Proves: an unprivileged user (uid/gid 65534, no groups) cannot open
# /dev/usrbd-control (so cannot create, attach or destroy), cannot open the
# block device, cannot see the server's fds and cannot talk to the service's
# control socket (status, detach); root without CAP_SYS_ADMIN is refused by
# the module even with the node made world-writable; and a server fd of one
# device cannot complete another device's requests (vmkit fuzz's
# other-device-tag answers are all rejected).
# group: rel
# order: 50
# timeout: 240
# soak-timeout: 900
set -eu
. "$USRBD_TESTS/lib.sh"

nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
no_sys_admin() { setpriv --inh-caps=-sys_admin --bounding-set=-sys_admin "$@"; }

# refused WHO DESCRIPTION COMMAND...: COMMAND run as WHO must fail with
# EACCES/EPERM; its message is kept in $USRBD_TMP/refused.out.
refused() {
	who=$1
	desc=$2
	shift 2
	if "$who" "$@" >"$USRBD_TMP/refused.out" 2>&1; then
		cat "$USRBD_TMP/refused.out"
		fail "$who could $desc"
	fi
	grep -qiE 'permission denied|not permitted|EACCES|EPERM' "$USRBD_TMP/refused.out" || {
		cat "$USRBD_TMP/refused.out"
		fail "$who: $desc failed, but not with a permission error"
	}
	log "ok: $who cannot $desc: $(head -n 1 "$USRBD_TMP/refused.out")"
}

load_module
t0=$(date +%s)
start_server usrbd0 --size 16MiB --backend ram
refusals=0
[ "$(stat -c '%a %U' /dev/usrbd-control)" = "600 root" ] ||
	fail "/dev/usrbd-control is $(stat -c '%a %U:%G' /dev/usrbd-control), want 600 root"
check "nobody is uid 65534" sh -c '[ "$(setpriv --reuid=65534 --regid=65534 --clear-groups id -u)" = 65534 ]'

refused nobody "open /dev/usrbd-control" sh -c 'exec 3<>/dev/usrbd-control'
refused nobody "list devices (usrbd list)" "$USRBD" list
refused nobody "destroy usrbd0" "$USRBD" destroy --force --name usrbd0
refused nobody "open /dev/usrbd0 for writing" dd if=/dev/zero of=/dev/usrbd0 bs=4k count=1 oflag=direct status=none
refused nobody "list the server's fds" ls "/proc/$SERVER_PID/fd"
refused nobody "query the service (usrbd status)" "$USRBD" status --socket "$(sock usrbd0)" --json
refused nobody "detach (usrbd detach)" "$USRBD" detach --socket "$(sock usrbd0)"
refusals=7
check "still serving after the refused detach" state_is usrbd0 serving

# The module checks CAP_SYS_ADMIN itself: the node's mode is not the only gate.
chmod 666 /dev/usrbd-control
trap 'chmod 600 /dev/usrbd-control; lib_cleanup' EXIT
refused nobody "open a world-writable /dev/usrbd-control" sh -c 'exec 3<>/dev/usrbd-control'
refused no_sys_admin "open /dev/usrbd-control as root without CAP_SYS_ADMIN" sh -c 'exec 3<>/dev/usrbd-control'
chmod 600 /dev/usrbd-control
refusals=$((refusals + 2))
listed usrbd0 || fail "usrbd0 no longer listed"
write_read_check /dev/usrbd0
stop_server "$SERVER_PID"

# Cross-device answers: vmkit fuzz serves devices A and B and answers tags
# in flight on one device through the other's server fd.
iterations=$(soak_or 10000 200000)
out=$USRBD_TMP/fuzz.out
if ! "$VMKIT" fuzz --iterations "$iterations" >"$out" 2>&1; then
	tail -n 60 "$out"
	fail "vmkit fuzz --iterations $iterations failed"
fi
row() { awk -v k="$1" '$1 == k { print $2, $3 }' "$out"; }
# shellcheck disable=SC2046 # two numbers into $1 $2
set -- $(row serve:other-device-tag)
cross_calls=${1:-0}
cross_rejected=${2:-0}
[ "$cross_calls" -gt 0 ] || {
	tail -n 60 "$out"
	fail "vmkit fuzz sent no other-device answer in $iterations cases"
}
[ "$cross_rejected" -eq "$cross_calls" ] ||
	fail "$((cross_calls - cross_rejected)) of $cross_calls answers with another device's tag were accepted"
log "ok: $cross_calls answers with another device's tag, all rejected"
# shellcheck disable=SC2046
set -- $(row serve:other-queue-tag)
figures refusals=$refusals cross_device_answers=$cross_calls \
	cross_device_rejected=$cross_rejected cross_queue_answers=${1:-0} \
	cross_queue_rejected=${2:-0} seconds=$(($(date +%s) - t0))
