// SPDX-License-Identifier: GPL-2.0
/*
 * usrbd: block devices served from userspace.
 *
 * main.c: module parameters, init and exit. The control device lives in
 * ctrl.c, the blk-mq request path in queue.c, the server fds in server.c
 * and device create/destroy in lifecycle.c.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/cpumask.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>

#include "usrbd.h"

unsigned int usrbd_max_devices = 64;
module_param_named(max_devices, usrbd_max_devices, uint, 0444);
MODULE_PARM_DESC(max_devices, "Devices that may exist at once (1-256, default 64)");

unsigned int usrbd_default_timeout_ms = 30000;
module_param_named(default_timeout_ms, usrbd_default_timeout_ms, uint, 0644);
MODULE_PARM_DESC(default_timeout_ms,
		 "Per-request timeout when create asks for 0, in ms (default 30000)");

unsigned int usrbd_destroy_timeout_ms = 30000;
module_param_named(destroy_timeout_ms, usrbd_destroy_timeout_ms, uint, 0644);
MODULE_PARM_DESC(destroy_timeout_ms,
		 "Graceful destroy drain deadline when destroy asks for 0, in ms (default 30000)");

unsigned int usrbd_poll_spin_us;
module_param_named(poll_spin_us, usrbd_poll_spin_us, uint, 0644);
MODULE_PARM_DESC(poll_spin_us,
		 "Busy-poll this long in SERVE before sleeping for work, in us (default 0: off)");

unsigned int usrbd_max_queues(void)
{
	return min_t(unsigned int, USRBD_MAX_QUEUES, num_online_cpus());
}

static int __init usrbd_init(void)
{
	int ret;

	if (!usrbd_max_devices || usrbd_max_devices > USRBD_MAX_DEVICES) {
		pr_err("max_devices must be 1..%u\n", USRBD_MAX_DEVICES);
		return -EINVAL;
	}
	if (!usrbd_default_timeout_ms ||
	    usrbd_default_timeout_ms > USRBD_MAX_TIMEOUT_MS) {
		pr_err("default_timeout_ms must be 1..%u\n", USRBD_MAX_TIMEOUT_MS);
		return -EINVAL;
	}

	ret = usrbd_lifecycle_init();
	if (ret)
		return ret;
	ret = usrbd_ctrl_register();
	if (ret) {
		usrbd_lifecycle_exit();
		return ret;
	}
	pr_info("abi %u, up to %u devices\n", USRBD_ABI_VERSION, usrbd_max_devices);
	return 0;
}

static void __exit usrbd_exit(void)
{
	/* No new device can be created once the control device is gone. */
	usrbd_ctrl_unregister();
	usrbd_destroy_all();
	usrbd_lifecycle_exit();
}

module_init(usrbd_init);
module_exit(usrbd_exit);

MODULE_DESCRIPTION("Block devices served from userspace");
MODULE_AUTHOR("usrbd developers");
MODULE_LICENSE("GPL");
