#!/bin/sh
# fio's exec_prerun/exec_postrun hook (see tests/bench/guest.sh):
#
#   sh tests/bench/snap.sh FILE PID DEV
#
# writes "CPU_TICKS DEV_BYTES" to FILE: utime + stime of process PID (every
# thread; 0 for PID "-") and the bytes read plus written through /dev/DEV.
# fio runs it once per job clone; the clones start and stop together, so the
# last write wins and is as good as the first.
set -u
ticks=0
if [ "$2" != - ]; then
	# Fields after the command name's closing parenthesis start at field 3.
	ticks=$(sed 's/.*) //' "/proc/$2/stat" | awk '{ printf "%d\n", $12 + $13 }')
fi
# %.0f: awk would print a large sum in exponent notation.
bytes=$(awk '{ printf "%.0f\n", ($3 + $7) * 512 }' "/sys/block/$3/stat")
echo "$ticks $bytes" >"$1"
