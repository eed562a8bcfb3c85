SUMMARY = "usrbd service configuration for this board"
DESCRIPTION = "/etc/usrbd/usrbd.toml: the repository's default config \
               (firmware/usrbd.toml) with the [panel] table of the machine's pin map \
               (board/pinmaps/)."
HOMEPAGE = "https://github.com/usrbd/usrbd"
BUGTRACKER = "https://github.com/usrbd/usrbd/issues"
SECTION = "base"
LICENSE = "MIT | Apache-2.0"
# The repository's own licence texts (the workspace: `license = "MIT OR Apache-2.0"`).
LIC_FILES_CHKSUM = "file://LICENSE-MIT;md5=04c3aee67c0cf4228b89462916897464 \
                    file://LICENSE-APACHE;md5=3b83ef96387f14655fc854ddc3c6bd57 \
"

FILESEXTRAPATHS:prepend := "${USRBD_TOPDIR}:"
SRC_URI = "file://firmware/usrbd.toml;subdir=${BP} \
           file://board/pinmaps;subdir=${BP} \
           file://LICENSE-MIT;subdir=${BP} \
           file://LICENSE-APACHE;subdir=${BP} \
"
# S is the default ${BP} directory of the unpacked files in both series
# (WORKDIR in scarthgap, UNPACKDIR from styhead on).

# Only files are installed: no compiler, no C library.
INHIBIT_DEFAULT_DEPS = "1"

# Pin map (board/pinmaps/<name>.toml): the board config sets the machine's
# default (conf/distro/include/usrbd-rpi.inc); set USRBD_PINMAP in local.conf
# to pick another. Empty keeps the default config's own [panel].
USRBD_PINMAP_DEFAULT ??= ""
USRBD_PINMAP ??= "${USRBD_PINMAP_DEFAULT}"

# The pin map makes the file differ per machine.
PACKAGE_ARCH = "${MACHINE_ARCH}"

do_configure[noexec] = "1"

do_compile() {
    if [ -n "${USRBD_PINMAP}" ]; then
        sh ${S}/board/pinmaps/apply-pinmap.sh ${S}/firmware/usrbd.toml \
            ${S}/board/pinmaps/${USRBD_PINMAP}.toml > ${B}/usrbd.toml
    else
        cp ${S}/firmware/usrbd.toml ${B}/usrbd.toml
    fi
}

do_install() {
    install -d ${D}${sysconfdir}/usrbd ${D}${datadir}/usrbd/pinmaps
    install -m 0644 ${B}/usrbd.toml ${D}${sysconfdir}/usrbd/usrbd.toml
    install -m 0644 ${S}/board/pinmaps/*.toml ${D}${datadir}/usrbd/pinmaps/
    # The default config keeps the RAM image (and file backends) under /data.
    install -d -m 0755 ${D}/data
}

FILES:${PN} += "${datadir}/usrbd /data"
CONFFILES:${PN} = "${sysconfdir}/usrbd/usrbd.toml"
