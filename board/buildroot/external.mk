# The repository this external tree sits in (board/buildroot/ inside it):
# packages build its kmod/ and Cargo workspace, and the board scripts read
# board/rpi/ and board/pinmaps/ from it.
USRBD_TOPDIR := $(realpath $(BR2_EXTERNAL_USRBD_PATH)/../..)

include $(sort $(wildcard $(BR2_EXTERNAL_USRBD_PATH)/package/*/*.mk))
