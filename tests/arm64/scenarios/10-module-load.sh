# usrbd.ko (cross-built against Debian's arm64 headers) loads and creates
# the control device; the aarch64 service lists no devices yet.
insmod /usrbd.ko || fail "insmod usrbd.ko failed: $(dmesg | tail -n 5)"
[ -c /dev/usrbd-control ] || fail "/dev/usrbd-control missing after insmod"
out=$(/bin/usrbd-aarch64 list 2>&1) || fail "usrbd list failed: $out"
[ -z "$out" ] || fail "usrbd list shows devices before any was created: $out"
grep usrbd /proc/modules
