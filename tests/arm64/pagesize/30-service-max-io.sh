# The service checks --max-io against the page size itself, naming it, before
# it asks the module for anything.
out=$(/bin/usrbd-aarch64 serve --name usrbd0 --size 64MiB --backend ram \
	--max-io 4K --button none --socket "$SOCK" 2>&1) &&
	fail "the service served with a 4 KiB max_io: $out"
echo "$out"
echo "$out" | grep -q "16384" || fail "the service's refusal does not name the 16384-byte page size"
[ ! -e "$DEV" ] || fail "$DEV exists after the refused serve"
