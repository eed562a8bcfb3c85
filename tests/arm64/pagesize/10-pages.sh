# The kernel maps 16 KiB pages (what Raspberry Pi 5 kernels use), and
# usrbd.ko built against it loads.
kps=$(grep -m 1 KernelPageSize /proc/self/smaps | awk '{print $2}')
[ "$kps" = 16 ] || fail "kernel page size is ${kps:-unknown} kB, want 16"
echo "kernel page size: $kps kB"
insmod /usrbd.ko || fail "insmod usrbd.ko failed: $(dmesg | tail -n 5)"
[ -c /dev/usrbd-control ] || fail "/dev/usrbd-control missing after insmod"
