# The button detaches the armv7 service too; its saved image holds both the
# data it loaded and the data written through it.
press_and_detach armv7
check_image /data/armv7.img
check_region /data/armv7.img 4 /tmp/aarch64.pat "saved image, aarch64 data"
check_region /data/armv7.img 20 /tmp/armv7.pat "saved image, armv7 data"
check_zero /data/armv7.img 12 8 "saved image"
stop_service armv7
