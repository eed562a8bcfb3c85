#!/bin/sh
# The counted window of a profiled run (perf stat's workload, see
# tests/bench/guest.sh):
#
#   sh tests/bench/window.sh DEV PID SECONDS
#
# prints, at its start and after SECONDS, one line "REQUESTS UPTIME SLEEPS":
# requests /dev/DEV completed (reads plus writes), the guest's uptime, and
# the voluntary context switches of every thread of PID (each one a sleep).
set -u
snap() {
	ios=$(awk '{ printf "%d", $1 + $5 }' "/sys/block/$1/stat")
	up=$(cut -d' ' -f1 /proc/uptime)
	sleeps=$(cat "/proc/$2"/task/*/status 2>/dev/null |
		awk '/^voluntary_ctxt_switches:/ { s += $2 } END { printf "%d", s }')
	echo "$ios $up $sleeps"
}
snap "$1" "$2"
sleep "$3"
snap "$1" "$2"
