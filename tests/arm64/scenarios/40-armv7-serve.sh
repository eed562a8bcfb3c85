# 32-bit userspace on the 64-bit kernel: the static armv7 service (an ELF32
# binary) serves through the compat ioctl path. It loads the image the aarch64
# service saved, so its data must read back; new data written at 20 MiB must
# read back too.
class=$(dd if=/bin/usrbd-armv7 bs=1 skip=4 count=1 2>/dev/null | od -An -tx1 | tr -d ' ')
[ "$class" = 01 ] || fail "/bin/usrbd-armv7 is not an ELF32 binary (class $class)"
[ "$(uname -m)" = aarch64 ] || fail "kernel is $(uname -m), not aarch64"
[ -f /data/aarch64.img ] || fail "no image from the aarch64 scenarios to start from"
cp /data/aarch64.img /data/armv7.img
serve armv7 /data/armv7.img
check_region "$DEV" 4 /tmp/aarch64.pat "aarch64 data through the armv7 service"
put_pattern armv7 20 8
check_served armv7 8
