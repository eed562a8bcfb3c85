################################################################################
#
# usrbd
#
################################################################################

# Built from the checkout this external tree sits in, as committed: the git
# download clones it at HEAD, and the cargo-package infrastructure vendors
# the crates of Cargo.lock into the same tarball (cargo checks each crate
# against the lock's sha256), so `make usrbd-source` fetches everything and
# later builds run offline. To build uncommitted edits, point
# USRBD_OVERRIDE_SRCDIR at the checkout (local.mk): cargo then reads the
# crates that download left in Buildroot's cargo home.
USRBD_VERSION := $(shell git -C $(USRBD_TOPDIR) rev-parse HEAD)
USRBD_SITE = $(USRBD_TOPDIR)
USRBD_SITE_METHOD = git
USRBD_LICENSE = MIT or Apache-2.0
USRBD_LICENSE_FILES = LICENSE-MIT LICENSE-APACHE
# The tarball is of whatever HEAD is: no fixed hash to list (the usrbd
# defconfigs therefore leave BR2_DOWNLOAD_FORCE_CHECK_HASHES off, which
# ignores this list). usrbd.hash covers the licence texts.
BR_NO_CHECK_HASH_FOR += $(USRBD_SOURCE)
# Build outputs of a checkout are not sources (USRBD_OVERRIDE_SRCDIR).
USRBD_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude /target --exclude /build

# The service crate is a member of the workspace at the repository root.
USRBD_SUBDIR = firmware

ifeq ($(BR2_PACKAGE_USRBD_RPI),y)
USRBD_CARGO_BUILD_OPTS += --features rpi
USRBD_CARGO_INSTALL_OPTS += --features rpi
endif

USRBD_PINMAP = $(call qstrip,$(BR2_PACKAGE_USRBD_PINMAP))

define USRBD_INSTALL_CONFIG
	$(INSTALL) -d $(TARGET_DIR)/etc/usrbd $(TARGET_DIR)/usr/share/usrbd/pinmaps
	if [ -n "$(USRBD_PINMAP)" ]; then \
		sh $(@D)/board/pinmaps/apply-pinmap.sh $(@D)/firmware/usrbd.toml \
			$(@D)/board/pinmaps/$(USRBD_PINMAP).toml \
			> $(TARGET_DIR)/etc/usrbd/usrbd.toml; \
	else \
		$(INSTALL) -m 0644 $(@D)/firmware/usrbd.toml $(TARGET_DIR)/etc/usrbd/usrbd.toml; \
	fi
	$(INSTALL) -m 0644 $(@D)/board/pinmaps/*.toml $(TARGET_DIR)/usr/share/usrbd/pinmaps/
endef
USRBD_POST_INSTALL_TARGET_HOOKS += USRBD_INSTALL_CONFIG

define USRBD_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(@D)/firmware/packaging/S50usrbd \
		$(TARGET_DIR)/etc/init.d/S50usrbd
endef

define USRBD_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/firmware/packaging/usrbd.service \
		$(TARGET_DIR)/usr/lib/systemd/system/usrbd.service
endef

$(eval $(cargo-package))
