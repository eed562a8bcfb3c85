#!/bin/sh
# Proves: a short button press during full write load detaches, cycle after
# cycle. The load comes from the USB host, as on the appliance (the device
# is exported as a USB drive; dummy_hcd is host and gadget in one VM):
# vmkit ackwrite (O_DIRECT write + fdatasync, logged once acknowledged) and
# fio at depth 16 on the host's /dev/sdX. The press ejects the medium, the
# host's writes fail, the device is destroyed, and every write the host saw
# acknowledged is in the backing file; a second press re-attaches and
# re-exports. (Local processes holding /dev/usrbd0 open would make the
# graceful destroy refuse, like a busy mount: see docs/reliability.md.)
# CI: 3 cycles; soak: 20.
# group: rel
# order: 20
# timeout: 420
# soak-timeout: 2400
set -eu
. "$USRBD_TESTS/lib.sh"

cycles=$(soak_or 3 20)
size=$((32 * 1024 * 1024))
img=$USRBD_TMP/backing.img
ack=$USRBD_TMP/ack.log

usb_host_setup
# On failure, the service's view of it too.
# shellcheck disable=SC2154 # rc is set inside the trap
trap 'rc=$?; [ $rc -eq 0 ] || tail -n 40 "$USRBD_TMP/server-usrbd0.log"; lib_cleanup; usb_gadget_remove' EXIT
load_module
start_panel
# shellcheck disable=SC2086 # word splitting of the panel flags is meant
start_server usrbd0 --size 32MiB --backend file --file "$img" --export usb $PANEL_ARGS
srv=$SERVER_PID
t0=$(date +%s)
checked=0
slowest=0
i=0
while [ $i -lt "$cycles" ]; do
	i=$((i + 1))
	wait_usb_disk usrbd "$size"
	sd=$USB_SD
	ackwrite_start "/dev/$sd" "$ack" $((16 * 1024 * 1024))
	fio --name=load --thread --filename="/dev/$sd" --rw=randwrite --bs=4k --iodepth=16 \
		--ioengine=libaio --direct=1 --offset=16M --size=16M --time_based \
		--runtime=600 >"$USRBD_TMP/fio.out" 2>&1 &
	fio=$!
	track $fio
	acked0=$(acked_count "$ack")
	sleep_ms "$(rand_between 2000 5000)"
	if ! running "$ACK_PID" || ! running $fio; then
		cat "$USRBD_TMP/ackwrite.out" "$USRBD_TMP/fio.out"
		fail "cycle $i: a host writer stopped before the press"
	fi
	[ "$(acked_count "$ack")" -gt "$acked0" ] || fail "cycle $i: no host write acknowledged before the press"
	pressed=$(date +%s)
	press_button 200
	wait_state usrbd0 safe 120
	took=$(($(date +%s) - pressed))
	[ $took -gt $slowest ] && slowest=$took
	wait_until 60 "ackwrite to stop on the ejected medium" not_running "$ACK_PID"
	wait_until 60 "fio to stop on the ejected medium" not_running $fio
	ackwrite_stop
	wait $fio 2>/dev/null || true
	check_gone usrbd0
	ackcheck_image "$img" "$ack"
	checked=$((checked + ACK_CHECKED))
	log "cycle $i: safe ${took}s after the press; $(($(acked_count "$ack") - acked0)) host writes acknowledged this cycle, $ACK_CHECKED blocks verified"
	press_button 200
	wait_state usrbd0 serving 60
done
stop_server $srv
ackcheck_image "$img" "$ack"
figures cycles="$cycles" acked="$(acked_count "$ack")" blocks_verified=$checked missing=0 \
	slowest_detach_s=$slowest seconds=$(($(date +%s) - t0))
