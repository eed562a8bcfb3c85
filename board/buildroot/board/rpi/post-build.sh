#!/bin/sh
# usrbd post-build for the Raspberry Pi defconfigs, run after Buildroot's own
# board/raspberrypi/post-build.sh. $1 is TARGET_DIR.
set -eu

TARGET_DIR="$1"

# The default config keeps RAM images and backing files under /data on the
# root file system: make sure the directory exists in the image.
install -d -m 0755 "${TARGET_DIR}/data"
