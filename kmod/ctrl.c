// SPDX-License-Identifier: GPL-2.0
/*
 * usrbd: the control device /dev/usrbd-control and its ioctls.
 *
 * Root only: the node is created 0600 and open() also checks
 * CAP_SYS_ADMIN. Every structure has the same layout for 32-bit and 64-bit
 * userspace (no pointers, __aligned_u64), so compat_ptr_ioctl is enough.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "usrbd.h"

static int usrbd_ctrl_open(struct inode *inode, struct file *file)
{
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	return 0;
}

static long usrbd_ioc_version(void __user *arg)
{
	struct usrbd_version v = {
		.abi_version	= USRBD_ABI_VERSION,
		.features	= USRBD_F_ALL,
		.max_devices	= usrbd_max_devices,
		.max_queues	= usrbd_max_queues(),
		.max_queue_depth = USRBD_MAX_QUEUE_DEPTH,
		.max_io_bytes	= USRBD_MAX_IO_BYTES,
		.max_batch	= USRBD_MAX_BATCH,
		.attach_flags	= USRBD_ATTACH_LINEAR,
	};

	return copy_to_user(arg, &v, sizeof(v)) ? -EFAULT : 0;
}

static long usrbd_ioc_create(void __user *arg)
{
	struct usrbd_create c;
	int ret;

	if (copy_from_user(&c, arg, sizeof(c)))
		return -EFAULT;
	ret = usrbd_dev_create(&c);
	if (ret)
		return ret;
	/* The device exists now; a failed copy only loses the answer. */
	return copy_to_user(arg, &c, sizeof(c)) ? -EFAULT : 0;
}

static long usrbd_ioc_destroy(void __user *arg)
{
	struct usrbd_destroy d;

	if (copy_from_user(&d, arg, sizeof(d)))
		return -EFAULT;
	return usrbd_dev_destroy(&d);
}

static long usrbd_ioc_list(void __user *arg)
{
	struct usrbd_list *l;
	long ret;

	/* 1 KiB: too big for the stack. */
	l = kzalloc(sizeof(*l), GFP_KERNEL);
	if (!l)
		return -ENOMEM;
	usrbd_dev_list(l);
	ret = copy_to_user(arg, l, sizeof(*l)) ? -EFAULT : 0;
	kfree(l);
	return ret;
}

static long usrbd_ioc_status(void __user *arg)
{
	struct usrbd_status st;
	struct usrbd_dev *dev;
	u32 index;

	if (get_user(index, (u32 __user *)arg))
		return -EFAULT;
	dev = usrbd_dev_get(index);
	if (!dev)
		return -ENODEV;
	memset(&st, 0, sizeof(st));
	usrbd_dev_status(dev, &st);
	usrbd_dev_put(dev);
	return copy_to_user(arg, &st, sizeof(st)) ? -EFAULT : 0;
}

static long usrbd_ioc_attach(void __user *arg)
{
	struct usrbd_attach a;
	struct usrbd_dev *dev;
	int ret;

	if (copy_from_user(&a, arg, sizeof(a)))
		return -EFAULT;
	if ((a.flags & ~USRBD_ATTACH_LINEAR) || a.reserved) {
		pr_warn_ratelimited("attach: unknown flags or reserved not zero\n");
		return -EINVAL;
	}
	dev = usrbd_dev_get(a.index);
	if (!dev)
		return -ENODEV;
	ret = usrbd_server_attach(dev, &a);
	usrbd_dev_put(dev);
	return ret;
}

static long usrbd_ctrl_ioctl(struct file *file, unsigned int cmd,
			     unsigned long arg)
{
	void __user *argp = (void __user *)arg;

	switch (cmd) {
	case USRBD_IOC_VERSION:
		return usrbd_ioc_version(argp);
	case USRBD_IOC_CREATE:
		return usrbd_ioc_create(argp);
	case USRBD_IOC_DESTROY:
		return usrbd_ioc_destroy(argp);
	case USRBD_IOC_LIST:
		return usrbd_ioc_list(argp);
	case USRBD_IOC_STATUS:
		return usrbd_ioc_status(argp);
	case USRBD_IOC_ATTACH:
		return usrbd_ioc_attach(argp);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations usrbd_ctrl_fops = {
	.owner		= THIS_MODULE,
	.open		= usrbd_ctrl_open,
	.unlocked_ioctl	= usrbd_ctrl_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.llseek		= noop_llseek,
};

static struct miscdevice usrbd_ctrl_dev = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= USRBD_CONTROL_NAME,
	.fops	= &usrbd_ctrl_fops,
	.mode	= 0600,
};

int usrbd_ctrl_register(void)
{
	return misc_register(&usrbd_ctrl_dev);
}

void usrbd_ctrl_unregister(void)
{
	misc_deregister(&usrbd_ctrl_dev);
}
