#!/bin/sh
# Proves: random and malformed ioctls (vmkit fuzz: control fd and server
# fds of two served devices under I/O) are all rejected, the data the
# devices served checks out, the kernel logs no BUG/WARNING, and the module
# then serves a new device correctly. CI: 100 000 cases; soak: 1 000 000.
# group: rel
# order: 30
# timeout: 420
# soak-timeout: 3600
set -eu
. "$USRBD_TESTS/lib.sh"

iterations=$(soak_or 100000 1000000)
seed=$(rand_between 1 4000000000)
load_module
t0=$(date +%s)
out=$USRBD_TMP/fuzz.out
if ! "$VMKIT" fuzz --iterations "$iterations" --seed "$seed" >"$out" 2>&1; then
	tail -n 60 "$out"
	fail "vmkit fuzz --iterations $iterations --seed $seed failed"
fi
summary=$(grep '^fuzz: [0-9]* calls' "$out" | tail -n 1)
log "$summary"
echo "$summary" | grep -q 'all rejected; data check ok' || fail "fuzz summary: $summary"
calls=$(echo "$summary" | sed 's/^fuzz: \([0-9]*\) calls.*/\1/')
fuzz_s=$(($(date +%s) - t0))
load_module
start_server usrbd0 --size 16MiB --backend ram
write_read_check /dev/usrbd0
stop_server "$SERVER_PID"
figures cases=$iterations malformed_calls=$calls accepted=0 seed=$seed \
	fuzz_seconds=$fuzz_s seconds=$(($(date +%s) - t0))
