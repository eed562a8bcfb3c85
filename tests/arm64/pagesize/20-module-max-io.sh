# usrbd.ko refuses a max_io_bytes that is not a multiple of the page size:
# the block layer needs at least a page per request (6.9+ warns and fails the
# disk allocation, older kernels round the limit up to a page and every
# page-cache read then exceeds max_io_bytes). EINVAL, a reason in the log,
# and no kernel warning; one page is accepted.
dmesg -c > /dev/null
out=$(/bin/usrbd-create 4096) && fail "a 4 KiB max_io_bytes was accepted: $out"
echo "4096: $out"
case $out in
*"Invalid argument"*) ;;
*) fail "want EINVAL for 4096, got: $out" ;;
esac
log=$(dmesg)
if echo "$log" | grep -q 'WARNING:\|Call trace'; then
	echo "$log"
	fail "refusing 4096 left a kernel warning: $(echo "$log" | grep -m 1 'WARNING:')"
fi
echo "$log" | grep -q "multiple of the page size" ||
	fail "no 'multiple of the page size' reason in the log: $(echo "$log" | tail -n 3)"
out=$(/bin/usrbd-create 24576) && fail "24 KiB (1.5 pages) was accepted: $out"
echo "24576: $out"
out=$(/bin/usrbd-create 16384) || fail "one page (16384) was refused: $out"
echo "16384: $out"
