#!/bin/sh
# usrbd post-image for the Raspberry Pi defconfigs: adds the usrbd boot
# configuration to the firmware's config.txt, then writes sdcard.img with
# genimage. $1 is BINARIES_DIR; then BR2_ROOTFS_POST_SCRIPT_ARGS: "gadget"
# also enables the DWC2 USB device controller (Zero W, 4, 5).
set -eu
shift

BOARD_DIR="$(dirname "$0")"
TOPDIR="$(cd "${BOARD_DIR}/../../../.." && pwd)"
CONFIG="${BINARIES_DIR}/rpi-firmware/config.txt"

# The fragments are the same files every usrbd image uses (board/rpi/).
# post-image runs on every `make`, so append only once.
if ! grep -q '^# usrbd fragment' "${CONFIG}"; then
	cat "${TOPDIR}/board/rpi/config.txt" >> "${CONFIG}"
	for arg in "$@"; do
		case "${arg}" in
		gadget) cat "${TOPDIR}/board/rpi/config-gadget.txt" >> "${CONFIG}" ;;
		*) echo "post-image.sh: unknown argument ${arg}" >&2; exit 1 ;;
		esac
	done
fi

# genimage lists the boot partition files itself: the kernel named in
# config.txt, the DTBs and everything rpi-firmware installed.
KERNEL="$(sed -n 's/^kernel=//p' "${CONFIG}")"
FILES="$(cd "${BINARIES_DIR}" &&
	for f in ./*.dtb rpi-firmware/* "${KERNEL}"; do
		if [ -e "${f}" ]; then printf '\t\t\t"%s",\n' "${f#./}"; fi
	done)"
GENIMAGE_CFG="${BUILD_DIR}/usrbd-genimage.cfg"
awk -v files="${FILES}" '{ if ($0 ~ /#BOOT_FILES#/) print files; else print }' \
	"${BOARD_DIR}/genimage.cfg.in" > "${GENIMAGE_CFG}"

ROOTPATH_TMP="$(mktemp -d)"
trap 'rm -rf "${ROOTPATH_TMP}"' EXIT
rm -rf "${BUILD_DIR}/genimage.tmp"
genimage \
	--rootpath "${ROOTPATH_TMP}" \
	--tmppath "${BUILD_DIR}/genimage.tmp" \
	--inputpath "${BINARIES_DIR}" \
	--outputpath "${BINARIES_DIR}" \
	--config "${GENIMAGE_CFG}"
