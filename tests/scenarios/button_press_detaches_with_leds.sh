#!/bin/sh
# Proves: a short press of the (uinput) button detaches like `usrbd detach`
# (unmounted, destroyed, RAM image saved with the same files), and the LED
# class events read back from the uinput device go serving -> detaching ->
# safe.
# group: main
set -eu
. "$USRBD_TESTS/lib.sh"

detach_round_trip button ram
