#!/bin/sh
# Proves: four devices with four hardware queues each, served at once, pass
# fio's crc32c write/verify on all of them together with zero errors.
# group: quad
# timeout: 420
set -eu
. "$USRBD_TESTS/lib.sh"

[ "$(nproc)" -ge 4 ] || fail "this group needs 4 vCPUs, the VM has $(nproc)"
load_module
jobs=""
for i in 0 1 2 3; do
	start_server "usrbd$i" --size 64MiB --backend ram --queues 4
	q=$(ls -d /sys/block/usrbd$i/mq/* | wc -l)
	[ "$q" -eq 4 ] || fail "usrbd$i has $q hardware queues, want 4"
	jobs="$jobs --name=dev$i --filename=/dev/usrbd$i"
done
log "ok: 4 devices x 4 hardware queues"
# shellcheck disable=SC2086 # one fio job per device
if ! fio --ioengine=libaio --direct=1 --rw=randwrite --bsrange=4k-64k \
	--iodepth=16 --numjobs=1 --size=24M --verify=crc32c --do_verify=1 \
	--verify_fatal=1 $jobs >"$USRBD_TMP/fio.out" 2>&1; then
	cat "$USRBD_TMP/fio.out"
	fail "fio verify failed"
fi
grep -E 'err=|verify' "$USRBD_TMP/fio.out" || true
errs=$(grep -o 'err= *[0-9]*' "$USRBD_TMP/fio.out" | grep -v 'err= *0$' || true)
[ -z "$errs" ] || fail "fio jobs with errors: $errs"
[ "$(grep -c 'err= *0' "$USRBD_TMP/fio.out")" -eq 4 ] || {
	cat "$USRBD_TMP/fio.out"
	fail "expected 4 fio jobs with err=0"
}
log "ok: fio crc32c verify on 4 devices, 0 errors"
for i in 0 1 2 3; do
	"$USRBD" detach --socket "$(sock "usrbd$i")" >/dev/null || fail "detach usrbd$i"
	check_gone "usrbd$i"
done
