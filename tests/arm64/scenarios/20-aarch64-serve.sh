# The static aarch64 service serves a 64 MiB RAM device: 8 MiB of random
# data written at 4 MiB read back identical after the page cache is dropped,
# and the service's counters saw the writes.
serve aarch64 /data/aarch64.img
put_pattern aarch64 4 8
check_served aarch64 8
