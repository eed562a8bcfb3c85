#!/bin/sh
# Proves: the Debian packages install as a Raspberry Pi OS user installs them,
# `apt install ./usrbd-dkms_*.deb ./usrbd_*.deb`: DKMS builds and installs
# the module for the running kernel, `modprobe usrbd` loads that build, the
# unit is enabled and valid, the packaged binary with the packaged config
# serves a device, and `apt remove` unloads the module, deletes its build and
# keeps the user's edited config and the saved data.
#
# The .debs are the xtask's `target/deb/vm/` (beside `target/release/`,
# where $USRBD is), built around the binary this test run built.
# group: packaging
# timeout: 1800
set -eu
. "$USRBD_TESTS/lib.sh"

DEBS=$(dirname "$USRBD")/../deb/vm
KVER=$(uname -r)
UNIT=/lib/systemd/system/usrbd.service
CONFIG=/etc/usrbd/usrbd.toml
IMAGE=/var/lib/usrbd/usrbd.img

set -- "$DEBS"/usrbd-dkms_*_all.deb
dkms_deb=$1
set -- "$DEBS"/usrbd_*_amd64.deb
service_deb=$1
[ -f "$dkms_deb" ] && [ -f "$service_deb" ] ||
	fail "no usrbd-dkms/usrbd .debs in $DEBS (the test's deb step failed?)"

loaded() { grep -q '^usrbd ' /proc/modules; }
if loaded; then
	rmmod usrbd || fail "a usrbd left loaded by an earlier scenario cannot be removed"
fi

# virtme-ng keeps apt's state on tmpfs: its directories start empty.
mkdir -p /var/lib/apt/lists/partial /var/cache/apt/archives/partial
log "apt install $dkms_deb $service_deb"
started=$(date +%s)
DEBIAN_FRONTEND=noninteractive apt install -y "$dkms_deb" "$service_deb" &
apt_pid=$!
# DKMS compiles the module under TCG for minutes: show how far make got.
while running $apt_pid; do
	sleep 30
	for make_log in /var/lib/dkms/usrbd/*/build/make.log; do
		[ -f "$make_log" ] && log "$(($(date +%s) - started)) s, make: $(tail -n 1 "$make_log")"
	done
done
wait $apt_pid || fail "apt install of the two packages failed"
log "installed in $(($(date +%s) - started)) s"

# --- the module, built by DKMS --------------------------------------------
status=$(dkms status -m usrbd)
log "dkms status: $status"
echo "$status" | grep -Eq "^usrbd/[^,]+, $KVER, x86_64: installed" ||
	fail "dkms status shows no installed usrbd for $KVER: $status"
ko=$(modinfo -n -k "$KVER" usrbd) || fail "modinfo finds no usrbd for $KVER"
case "$ko" in
"/lib/modules/$KVER/updates/dkms/"usrbd.ko*) log "ok: module file $ko" ;;
*) fail "modinfo names $ko, not the DKMS build in updates/dkms" ;;
esac
grep -qx usrbd /usr/lib/modules-load.d/usrbd.conf ||
	fail "/usr/lib/modules-load.d/usrbd.conf does not load usrbd at boot"
check "modprobe usrbd" modprobe usrbd
[ "$(cat /sys/module/usrbd/srcversion)" = "$(modinfo -F srcversion "$ko")" ] ||
	fail "the loaded usrbd is not the DKMS build"
wait_until 10 "/dev/usrbd-control" test -c /dev/usrbd-control

# --- the service: unit, config, a device served -----------------------------
check "the unit is enabled (multi-user.target.wants)" \
	test -L /etc/systemd/system/multi-user.target.wants/usrbd.service
check "systemd-analyze verify $UNIT" systemd-analyze verify "$UNIT"
check "$CONFIG is a conffile of usrbd" \
	sh -c "dpkg-query -W -f='\${Conffiles}' usrbd | grep -q ' $CONFIG '"
grep -q "^image = \"$IMAGE\"" "$CONFIG" || fail "$CONFIG does not save to $IMAGE"
check "/var/lib/usrbd exists" test -d /var/lib/usrbd

if [ -d /run/systemd/system ]; then
	fail "this guest runs systemd: start the unit with systemctl here"
fi
# No systemd in this VM (virtme-ng's init): run the unit's ExecStart= as
# systemd would, with its RuntimeDirectory=, plus the test panel (no GPIO,
# no ACT/PWR LEDs here) as flags overriding the config's [panel].
exec_start=$(sed -n 's/^ExecStart=//p' "$UNIT")
case "$exec_start" in
"/usr/bin/usrbd serve --config $CONFIG") ;;
*) fail "unexpected ExecStart= in $UNIT: $exec_start" ;;
esac
mkdir -p -m 0700 /run/usrbd
start_panel
slog=$USRBD_TMP/service.log
# shellcheck disable=SC2086 # the unit's command line and the panel flags split on spaces
RUST_LOG=info $exec_start $PANEL_ARGS >"$slog" 2>&1 &
SERVICE_PID=$!
track $SERVICE_PID
wait_until 120 "the packaged service serving /dev/usrbd0" grep -q "usrbd: serving /dev/usrbd0" "$slog"
wait_until 10 "/dev/usrbd0" test -b /dev/usrbd0

head -c 4194304 /dev/urandom >"$USRBD_TMP/pattern"
want=$(sha256sum <"$USRBD_TMP/pattern" | cut -d' ' -f1)
check "write 4 MiB to /dev/usrbd0" dd if="$USRBD_TMP/pattern" of=/dev/usrbd0 bs=1M oflag=direct status=none
got=$(dd if=/dev/usrbd0 bs=1M count=4 iflag=direct status=none | sha256sum | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "/dev/usrbd0 read back other data than written"
log "ok: /dev/usrbd0 serves (4 MiB written and read back)"

# systemd's stop: SIGTERM, a full detach that saves the RAM image.
stop_server $SERVICE_PID
check "$IMAGE saved at stop" test -s "$IMAGE"
saved=$(head -c 4194304 "$IMAGE" | sha256sum | cut -d' ' -f1)
[ "$saved" = "$want" ] || fail "$IMAGE does not hold the data written"

# --- apt remove -------------------------------------------------------------
echo "# edited by the user" >>"$CONFIG"
edited=$(sha256sum <"$CONFIG")
check "apt remove usrbd usrbd-dkms" env DEBIAN_FRONTEND=noninteractive apt remove -y usrbd usrbd-dkms
if loaded; then
	fail "usrbd is still loaded after apt remove"
fi
log "ok: usrbd not loaded"
if dkms status -m usrbd | grep -q .; then
	fail "dkms still lists usrbd: $(dkms status -m usrbd)"
fi
if ls /lib/modules/*/updates/dkms/usrbd.ko* >/dev/null 2>&1; then
	fail "module files left: $(ls /lib/modules/*/updates/dkms/usrbd.ko*)"
fi
check "/usr/bin/usrbd removed" test ! -e /usr/bin/usrbd
[ "$(sha256sum <"$CONFIG")" = "$edited" ] || fail "$CONFIG lost the user's edit at apt remove"
log "ok: $CONFIG kept with the user's edit"
[ "$(head -c 4194304 "$IMAGE" | sha256sum | cut -d' ' -f1)" = "$want" ] ||
	fail "$IMAGE lost its data at apt remove"
log "ok: $IMAGE kept"
state=$(dpkg-query -W -f='${db:Status-Abbrev}' usrbd)
[ "$state" = "rc " ] || fail "usrbd is in dpkg state '$state', not rc (removed, config kept)"

# Leave this boot's later scenarios a guest without the packages.
check "dpkg --purge" dpkg --purge usrbd usrbd-dkms
rm -f "$IMAGE"
rmdir /var/lib/usrbd 2>/dev/null || true
check "purge removed $CONFIG" test ! -e "$CONFIG"
