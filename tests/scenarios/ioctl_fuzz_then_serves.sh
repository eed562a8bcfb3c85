#!/bin/sh
# Proves: random and malformed ioctls against the control device and server
# fds all fail cleanly (vmkit fuzz exits 0 only then), the kernel logs no
# BUG/WARNING, and the module then still serves correct data. 3000 cases:
# vmkit fuzz does ~30 cases/s under TCG, so 100000 would take an hour.
# group: main
# timeout: 300
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
check "vmkit fuzz --iterations 3000" "$VMKIT" fuzz --iterations 3000 --seed "$(date +%s)"
start_server usrbd0 --size 64MiB --backend ram
write_read_check /dev/usrbd0
stop_server "$SERVER_PID"
