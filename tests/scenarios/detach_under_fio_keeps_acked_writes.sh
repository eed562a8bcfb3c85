#!/bin/sh
# Proves: `usrbd detach` (graceful destroy) completes while fio writes are in
# flight on a file-backed device, and every write acknowledged by fsync
# before it is in the backing file (vmkit ackwrite / ackcheck).
# group: main
set -eu
. "$USRBD_TESTS/lib.sh"

load_module
img=$USRBD_TMP/backing.img
start_server usrbd0 --size 64MiB --backend file --file "$img" --queues 2
srv=$SERVER_PID
# ackwrite owns the first 32 MiB, fio hammers the rest.
"$VMKIT" ackwrite --dev /dev/usrbd0 --log "$USRBD_TMP/ack.log" --block 4096 \
	--span $((32 * 1024 * 1024)) >"$USRBD_TMP/ackwrite.out" 2>&1 &
ack=$!
track $ack
fio --name=load --filename=/dev/usrbd0 --allow_file_create=0 --rw=randwrite --bs=4k --iodepth=16 \
	--ioengine=libaio --direct=1 --offset=32M --size=32M --time_based \
	--runtime=120 >"$USRBD_TMP/fio.out" 2>&1 &
fio=$!
track $fio
sleep 8
[ -s "$USRBD_TMP/ack.log" ] || fail "ackwrite acknowledged nothing in 8 s"
running $fio || {
	cat "$USRBD_TMP/fio.out"
	fail "fio ended before the detach"
}
log "detaching with $(wc -l <"$USRBD_TMP/ack.log") writes acknowledged so far"
start=$(date +%s)
out=$(timeout 120 "$USRBD" detach --socket "$(sock usrbd0)" 2>&1) || fail "usrbd detach failed: $out"
log "usrbd detach ($(($(date +%s) - start)) s): $out"
check "state is safe" state_is usrbd0 safe
# The writers see the device go away (I/O errors) and stop on their own.
# fio must not re-create the vanished node as a regular file.
wait_until 60 "ackwrite to stop" not_running $ack
wait_until 60 "fio to stop" not_running $fio
cat "$USRBD_TMP/ackwrite.out"
check_gone usrbd0
check "every acknowledged write is in the backing file" \
	"$VMKIT" ackcheck --image "$img" --log "$USRBD_TMP/ack.log" --block 4096
stop_server $srv
