#!/bin/sh
# Proves: when the server is killed with SIGKILL during fio, outstanding and
# new I/O fails within the request timeout (3 s here), no task is left in D
# state, `usrbd destroy --force` removes the device and the module unloads.
# group: main
# timeout: 240
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
start_server usrbd0 --size 64MiB --backend ram --timeout-ms 3000 --queues 2
fio --name=victim --filename=/dev/usrbd0 --rw=randrw --bs=4k --iodepth=32 \
	--ioengine=libaio --direct=1 --time_based --runtime=300 \
	>"$USRBD_TMP/fio.out" 2>&1 &
fio=$!
track $fio
sleep 5
running $fio || {
	cat "$USRBD_TMP/fio.out"
	fail "fio ended before the kill"
}
log "kill -9 of the server (pid $SERVER_PID)"
kill -KILL "$SERVER_PID"
killed=$(date +%s)
wait_until 60 "fio to end after the server died" not_running $fio
rc=0
wait $fio || rc=$?
log "fio ended $(($(date +%s) - killed)) s after the kill, exit $rc"
tail -n 20 "$USRBD_TMP/fio.out"
[ "$rc" -ne 0 ] || fail "fio exited 0: no I/O error after the server died"
grep -qiE 'error|err=' "$USRBD_TMP/fio.out" || fail "fio reported no I/O error"
log "ok: fio saw I/O errors"
check_no_d_state
check "usrbd destroy --force --name usrbd0" "$USRBD" destroy --force --name usrbd0
check_gone usrbd0
check "rmmod usrbd" rmmod usrbd
