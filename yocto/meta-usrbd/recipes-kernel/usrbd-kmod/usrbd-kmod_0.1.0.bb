SUMMARY = "usrbd kernel module: block devices served from userspace"
DESCRIPTION = "usrbd.ko creates blk-mq block devices whose requests are \
               served by the usrbd service through /dev/usrbd-control."
HOMEPAGE = "https://github.com/usrbd/usrbd"
BUGTRACKER = "https://github.com/usrbd/usrbd/issues"
SECTION = "kernel/modules"
LICENSE = "GPL-2.0-only"
# The module is GPL-2.0 (its UAPI header adds the Linux-syscall-note):
# kmod/COPYING.
LIC_FILES_CHKSUM = "file://COPYING;md5=b234ee4d69f5fce4486a80fdaf4a4263"

# kmod/ of the checkout this layer sits in (USRBD_TOPDIR, conf/layer.conf).
FILESEXTRAPATHS:prepend := "${USRBD_TOPDIR}:"
SRC_URI = "file://kmod;subdir=${BP}"
S = "${USRBD_UNPACKDIR}/${BP}/kmod"

inherit module

# module.bbclass passes KERNEL_SRC, which kmod/Makefile takes as the kernel
# tree, and runs its modules / modules_install targets.

# Loaded at boot, before the service starts: the service opens /dev/usrbd-control.
KERNEL_MODULE_AUTOLOAD += "usrbd"

RPROVIDES:${PN} += "kernel-module-usrbd"

# kmod/ is copied as it is in the checkout, with whatever a host build left in
# it (objects for another kernel or architecture): build from sources only.
do_configure:prepend() {
    find ${S} \( -name '*.o' -o -name '*.ko' -o -name '*.mod' -o -name '*.mod.c' \
        -o -name '.*.cmd' -o -name modules.order -o -name Module.symvers \) -delete
}
