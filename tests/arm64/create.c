// SPDX-License-Identifier: GPL-2.0
/*
 * usrbd-create MAX_IO: asks usrbd.ko for a 1 MiB device whose requests are
 * at most MAX_IO bytes, and destroys it again. Prints "created usrbdN" or
 * "refused: <errno text>" (exit 1). The page-size scenarios use it to reach
 * the module's own checks, which the service's config check would hide.
 * Built static for aarch64 by `cargo xtask test --pagesize`.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <linux/usrbd.h>

int main(int argc, char **argv)
{
	struct usrbd_create c;
	struct usrbd_destroy d;
	int fd;

	if (argc != 2) {
		fprintf(stderr, "usage: %s MAX_IO_BYTES\n", argv[0]);
		return 2;
	}
	fd = open("/dev/" USRBD_CONTROL_NAME, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		perror("/dev/" USRBD_CONTROL_NAME);
		return 2;
	}
	memset(&c, 0, sizeof(c));
	c.abi_version = USRBD_ABI_VERSION;
	c.index = USRBD_INDEX_AUTO;
	c.size = 1 << 20;
	c.logical_block_size = 512;
	c.physical_block_size = 4096;
	c.nr_queues = 1;
	c.queue_depth = 4;
	c.max_io_bytes = strtoul(argv[1], NULL, 0);
	if (ioctl(fd, USRBD_IOC_CREATE, &c) < 0) {
		printf("refused: %s\n", strerror(errno));
		return 1;
	}
	printf("created %s\n", c.name);
	memset(&d, 0, sizeof(d));
	d.index = c.index;
	d.flags = USRBD_DESTROY_FORCE;
	if (ioctl(fd, USRBD_IOC_DESTROY, &d) < 0) {
		printf("destroy failed: %s\n", strerror(errno));
		return 2;
	}
	return 0;
}
