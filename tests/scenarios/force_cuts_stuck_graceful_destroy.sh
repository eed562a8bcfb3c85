#!/bin/sh
# Proves (lifecycle): a graceful destroy stuck writing back (64 MiB dirty in
# the page cache of a plain opener, the server SIGSTOPped) is cut short by a
# forced destroy: the force returns in under 2 s, the graceful call returns
# an error, the device is gone, and no task hangs. The deadline of a
# graceful destroy bounds its write back too: a second one, alone, returns
# within --timeout-ms (3 s) + 5 s (process start-up under TCG included).
# group: main
# timeout: 240
set -eu
. "$USRBD_TESTS/lib.sh"

ms() { date +%s%3N; }

# dirty_and_stop: 64 MiB written through the page cache of /dev/usrbd0, kept
# dirty by an opener that stays (the last close would write it back), then
# the server stopped. Sets HOLDER.
dirty_and_stop() {
	sleep 600 </dev/usrbd0 &
	HOLDER=$!
	track $HOLDER
	check "64 MiB buffered" dd if=/dev/urandom of=/dev/usrbd0 bs=1M count=64 status=none
	kill -STOP "$SERVER_PID"
}

load_module
start_server usrbd0 --size 256MiB --backend ram --timeout-ms 30000
srv=$SERVER_PID
dirty_and_stop
"$USRBD" destroy --name usrbd0 --timeout-ms 120000 >"$USRBD_TMP/graceful.out" 2>&1 &
graceful=$!
track $graceful
sleep 3
running $graceful || {
	cat "$USRBD_TMP/graceful.out"
	fail "the graceful destroy ended with the server stopped"
}
t=$(ms)
rc=0
"$USRBD" destroy --force --name usrbd0 || rc=$?
took=$(($(ms) - t))
log "forced destroy: exit $rc after $took ms"
[ "$rc" -eq 0 ] || fail "the forced destroy failed (exit $rc) during a graceful one"
[ "$took" -lt 2000 ] || fail "the forced destroy took $took ms"
wait_until 10 "the graceful destroy to return" not_running $graceful
grc=0
wait $graceful || grc=$?
log "graceful destroy: exit $grc: $(cat "$USRBD_TMP/graceful.out")"
[ "$grc" -ne 0 ] || fail "the cut graceful destroy reported success"
kill -CONT "$srv"
kill -KILL $HOLDER 2>/dev/null || true
check_gone usrbd0
kill -KILL "$srv" 2>/dev/null || true

# The deadline alone: nothing forces this one.
start_server usrbd0 --size 256MiB --backend ram --timeout-ms 30000
srv=$SERVER_PID
dirty_and_stop
t=$(ms)
rc=0
"$USRBD" destroy --name usrbd0 --timeout-ms 3000 || rc=$?
took2=$(($(ms) - t))
log "graceful destroy with a 3 s deadline: exit $rc after $took2 ms"
[ "$rc" -ne 0 ] || fail "a destroy cut by its deadline reported success"
[ "$took2" -lt 8000 ] || fail "the 3 s deadline took $took2 ms"
kill -CONT "$srv"
kill -KILL $HOLDER 2>/dev/null || true
check_gone usrbd0
check_no_d_state
figures force_ms=$took deadline_3s_ms=$took2
