#!/bin/sh
# Proves: `usrbd detach` on a file-backed device unmounts the mounted ext4,
# destroys the device, and leaves a backing file that is clean and holds the
# same files.
# group: main
set -eu
. "$USRBD_TESTS/lib.sh"

detach_round_trip cli file
