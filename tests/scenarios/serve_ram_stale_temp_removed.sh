#!/bin/sh
# Proves: at start, `usrbd serve` of a RAM device with an image removes the
# temporary file a killed save left beside it (it would eat the room the next
# save needs) and leaves other files alone.
# group: main
# timeout: 120
set -eu
. "$USRBD_TESTS/lib.sh"

dir=$USRBD_TMP/data
mkdir -p "$dir"
touch "$dir/.ram.img.tmp-424242" "$dir/.other.img.tmp-1"
load_module
start_server usrbd0 --size 16MiB --backend ram --image "$dir/ram.img"
check "the stale temporary image is removed at start" test ! -e "$dir/.ram.img.tmp-424242"
check "another image's temporary file is kept" test -e "$dir/.other.img.tmp-1"
stop_server "$SERVER_PID"
