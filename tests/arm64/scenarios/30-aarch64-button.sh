# A press of the GPIO button (PL061 line 3, pulsed by the host) detaches:
# /dev/usrbd0 goes away, the state is safe, and the RAM image saved at
# detach holds the data written (zeros elsewhere).
press_and_detach aarch64
check_image /data/aarch64.img
check_region /data/aarch64.img 4 /tmp/aarch64.pat "saved image"
check_zero /data/aarch64.img 0 4 "saved image"
check_zero /data/aarch64.img 12 4 "saved image"
stop_service aarch64
