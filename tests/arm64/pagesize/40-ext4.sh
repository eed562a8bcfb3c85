# The aarch64 service serves a 64 MiB ext4 image (made on the host) from RAM
# with its default max_io (256 KiB, 16 pages): files written through the
# file system read back after a remount with the page cache dropped.
RUST_LOG=info /bin/usrbd-aarch64 serve --name usrbd0 --size 64MiB --backend ram \
	--image /data/ext4.img --button none --socket "$SOCK" > /tmp/p.log 2>&1 &
echo $! > /tmp/p.pid
wait_for 60 serving_or_gone p
grep -q "usrbd: serving $DEV" /tmp/p.log || fail "the service did not serve: $(cat /tmp/p.log)"
mkdir -p /mnt
mount -t ext4 "$DEV" /mnt || fail "mount -t ext4 $DEV failed: $(dmesg | tail -n 3)"
dd if=/dev/urandom of=/tmp/big bs=1M count=24 2>/dev/null
cp /tmp/big /mnt/big || fail "writing 24 MiB to ext4 failed"
i=0
while [ $i -lt 200 ]; do
	echo "file $i" > "/mnt/f$i"
	i=$((i + 1))
done
sync
umount /mnt || fail "umount failed"
echo 3 > /proc/sys/vm/drop_caches
mount -t ext4 -o ro "$DEV" /mnt || fail "remount failed: $(dmesg | tail -n 3)"
[ "$(sha < /mnt/big)" = "$(sha < /tmp/big)" ] || fail "24 MiB file differs after remount"
[ "$(cat /mnt/f137)" = "file 137" ] || fail "small file f137 differs after remount"
[ "$(ls /mnt | grep -c '^f')" = 200 ] || fail "want 200 small files, have $(ls /mnt | grep -c '^f')"
echo "ext4: 24 MiB file and 200 small files read back after remount ($(sha < /tmp/big))"
umount /mnt || fail "final umount failed"
dmesg | grep -i 'usrbd.*exceeds\|I/O error\|EXT4-fs error' && fail "I/O errors in the log"
cat /sys/block/usrbd0/queue/max_hw_sectors_kb
