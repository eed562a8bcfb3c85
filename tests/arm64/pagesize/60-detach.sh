# Detach through the control socket: the device goes away, the state is
# safe, and the service exits on SIGTERM.
/bin/usrbd-aarch64 detach --socket "$SOCK" || fail "detach failed"
wait_for 30 [ ! -e "$DEV" ] || fail "$DEV still present 30 s after detach"
wait_for 10 state_is aarch64 safe || fail "state is not safe: $(status_json aarch64)"
pid=$(cat /tmp/p.pid)
kill -TERM "$pid"
wait_for 20 eval "! kill -0 $pid 2>/dev/null" || fail "the service did not exit on SIGTERM"
dmesg | grep -q 'WARNING:\|Call trace' && fail "kernel warning during the run: $(dmesg | grep -m 1 'WARNING:')"
echo "detached; service exited"
