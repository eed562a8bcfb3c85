SUMMARY = "usrbd storage appliance SD-card image"
DESCRIPTION = "A minimal bootable image with the usrbd kernel module, the \
               usrbd service and its board config. Boot config (LED triggers, button \
               pull-up, USB gadget overlay) comes from conf/distro/include/usrbd-rpi.inc."
HOMEPAGE = "https://github.com/usrbd/usrbd"
BUGTRACKER = "https://github.com/usrbd/usrbd/issues"
SECTION = "images"
LICENSE = "MIT"

inherit core-image

IMAGE_INSTALL = "packagegroup-core-boot \
                 kernel-module-usrbd \
                 usrbd \
                 usrbd-config \
                 ${CORE_IMAGE_EXTRA_INSTALL} \
"

# e2fsprogs/dosfstools let the user put a file system on the served device.
IMAGE_INSTALL:append = " e2fsprogs-mke2fs dosfstools"

# Room for RAM-backed images saved to the SD card (KiB).
IMAGE_ROOTFS_EXTRA_SPACE = "524288"
