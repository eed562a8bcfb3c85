################################################################################
#
# usrbd
#
################################################################################

# Built from the checkout this external tree sits in.
USRBD_VERSION = 0.1.0
USRBD_SITE = $(USRBD_TOPDIR)
USRBD_SITE_METHOD = local
USRBD_LICENSE = MIT or Apache-2.0
# Build outputs of the checkout are not sources.
USRBD_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude /target --exclude /build

# The service crate is a member of the workspace at the repository root.
USRBD_SUBDIR = firmware

ifeq ($(BR2_PACKAGE_USRBD_RPI),y)
USRBD_CARGO_BUILD_OPTS += --features rpi
USRBD_CARGO_INSTALL_OPTS += --features rpi
endif

# Buildroot vendors crates while downloading, which a local source skips:
# vendor them here, once host-rustc is built (this step needs the network,
# like any download), and point cargo at the vendored copy, so the build
# itself stays --offline --locked.
define USRBD_VENDOR_CRATES
	if [ ! -d $(@D)/VENDOR ]; then \
		mkdir -p $(@D)/.cargo && \
		cd $(@D) && $(HOST_MAKE_ENV) CARGO_HOME=$(BR_CARGO_HOME) \
			cargo vendor --locked --versioned-dirs VENDOR \
			>> $(@D)/.cargo/config.toml; \
	fi
endef
USRBD_PRE_CONFIGURE_HOOKS += USRBD_VENDOR_CRATES

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
