SUMMARY = "usrbd appliance service"
DESCRIPTION = "Serves usrbd.ko block devices from RAM or the SD card, shows \
               state on LEDs and detaches cleanly on a GPIO button press."
HOMEPAGE = "https://github.com/usrbd/usrbd"
BUGTRACKER = "https://github.com/usrbd/usrbd/issues"
SECTION = "base"
LICENSE = "MIT | Apache-2.0"
# The repository's own licence texts (the workspace: `license = "MIT OR Apache-2.0"`).
LIC_FILES_CHKSUM = "file://LICENSE-MIT;md5=04c3aee67c0cf4228b89462916897464 \
                    file://LICENSE-APACHE;md5=3b83ef96387f14655fc854ddc3c6bd57 \
"

# Generated from Cargo.lock: `bitbake -c update_crates usrbd` (yocto/README.md).
require ${BPN}-crates.inc

# The Cargo workspace of the checkout this layer sits in (USRBD_TOPDIR,
# conf/layer.conf). Cargo loads every workspace member's manifest, so each
# member of the root Cargo.toml must be listed here.
FILESEXTRAPATHS:prepend := "${USRBD_TOPDIR}:"
SRC_URI += "file://Cargo.toml;subdir=${BP} \
            file://Cargo.lock;subdir=${BP} \
            file://firmware;subdir=${BP} \
            file://xtask;subdir=${BP} \
            file://tests/vmkit;subdir=${BP} \
            file://LICENSE-MIT;subdir=${BP} \
            file://LICENSE-APACHE;subdir=${BP} \
"

inherit cargo cargo-update-recipe-crates systemd update-rc.d

# Build the service package only; its manifest sits in the workspace.
CARGO_SRC_DIR = "firmware"

# rppal backend (/dev/gpiomem of the Raspberry Pi kernel); the default panel
# uses the GPIO character device and sysfs LEDs, which need no feature.
PACKAGECONFIG ??= ""
PACKAGECONFIG[rpi] = ""
CARGO_BUILD_FLAGS:append = "${@bb.utils.contains('PACKAGECONFIG', 'rpi', ' --features rpi', '', d)}"

do_install:append() {
    if ${@bb.utils.contains('DISTRO_FEATURES', 'systemd', 'true', 'false', d)}; then
        install -d ${D}${systemd_system_unitdir}
        install -m 0644 ${S}/firmware/packaging/usrbd.service ${D}${systemd_system_unitdir}/usrbd.service
    fi
    if ${@bb.utils.contains('DISTRO_FEATURES', 'sysvinit', 'true', 'false', d)}; then
        install -d ${D}${sysconfdir}/init.d
        install -m 0755 ${S}/firmware/packaging/S50usrbd ${D}${sysconfdir}/init.d/usrbd
    fi
}

SYSTEMD_SERVICE:${PN} = "usrbd.service"
INITSCRIPT_NAME = "usrbd"
INITSCRIPT_PARAMS = "defaults 50"

# /etc/usrbd/usrbd.toml is machine-specific (its [panel] comes from the board's
# pin map), so it lives in its own recipe; the module is machine-specific too.
RDEPENDS:${PN} += "usrbd-config"
RRECOMMENDS:${PN} += "kernel-module-usrbd"

# The USB mass-storage export: the DWC2 controller (peripheral mode), the
# gadget framework the service loads (`modprobe libcomposite`) and the
# function configfs loads when the service creates mass_storage.0. Raspberry
# Pi kernels build them as modules; recommended, not required, so a kernel
# that builds them in (no such packages) still makes an image.
RRECOMMENDS:${PN} += "kernel-module-dwc2 \
                      kernel-module-libcomposite \
                      kernel-module-usb-f-mass-storage \
"
