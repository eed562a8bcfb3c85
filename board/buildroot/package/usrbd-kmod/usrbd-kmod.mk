################################################################################
#
# usrbd-kmod
#
################################################################################

# kmod/ of the checkout this external tree sits in; the kernel-module
# infrastructure builds it with the kernel's Kbuild (M=).
USRBD_KMOD_VERSION = 0.1.0
USRBD_KMOD_SITE = $(USRBD_TOPDIR)/kmod
USRBD_KMOD_SITE_METHOD = local
USRBD_KMOD_LICENSE = GPL-2.0
USRBD_KMOD_LICENSE_FILES = COPYING

$(eval $(kernel-module))
$(eval $(generic-package))
