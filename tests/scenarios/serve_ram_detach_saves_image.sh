#!/bin/sh
# Proves: `usrbd detach` on a RAM-backed device with --image unmounts the
# mounted ext4, destroys the device, and saves an image that is clean and
# holds the same files.
# group: main
set -eu
. "$USRBD_TESTS/lib.sh"

detach_round_trip cli ram
