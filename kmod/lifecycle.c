// SPDX-License-Identifier: GPL-2.0
/*
 * usrbd: device table, create, destroy and the block device's open/close.
 *
 * Lifecycle of a device:
 *
 *   create      -> WAITING (disk added, no server)
 *   attach      -> LIVE while at least one server fd is attached
 *   destroy     -> DRAINING: new opens fail; a graceful destroy writes
 *                  back and flushes through the servers, fails new I/O
 *                  and waits for every request in flight to end
 *                  (deadline); a forced one skips the flush and the wait
 *   del_gendisk -> DEAD: queues refuse I/O, every server gets USRBD_EV_GONE
 *   last reference dropped (table, gendisk, server fds) -> freed
 *
 * A graceful destroy is cut short when its deadline passes (the deadline
 * bounds the whole destroy, write back included), when the destroying
 * process gets a fatal signal, or when a forced destroy comes meanwhile:
 * then new I/O fails at submission and everything queued or held fails
 * with BLK_STS_IOERR at once, which ends every wait of the destroy.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/blk-mq.h>
#include <linux/blkdev.h>
#include <linux/ctype.h>
#include <linux/jiffies.h>
#include <linux/log2.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "compat.h"
#include "usrbd.h"

/* Protects usrbd_devs[]: index and name uniqueness, lookups, removal. */
static DEFINE_MUTEX(usrbd_devs_lock);
static struct usrbd_dev **usrbd_devs;

int usrbd_lifecycle_init(void)
{
	usrbd_devs = kcalloc(usrbd_max_devices, sizeof(*usrbd_devs), GFP_KERNEL);
	return usrbd_devs ? 0 : -ENOMEM;
}

void usrbd_lifecycle_exit(void)
{
	kfree(usrbd_devs);
}

static void usrbd_dev_free(struct usrbd_dev *dev)
{
	u32 i;

	if (dev->queues)
		for (i = 0; i < dev->nr_queues; i++)
			kfree(dev->queues[i].held);
	kfree(dev->queues);
	kfree(dev);
}

static void usrbd_dev_release(struct kref *ref)
{
	struct usrbd_dev *dev = container_of(ref, struct usrbd_dev, ref);

	blk_mq_free_tag_set(&dev->tag_set);
	usrbd_dev_free(dev);
}

struct usrbd_dev *usrbd_dev_get(u32 index)
{
	struct usrbd_dev *dev = NULL;

	mutex_lock(&usrbd_devs_lock);
	if (index < usrbd_max_devices) {
		dev = usrbd_devs[index];
		if (dev)
			kref_get(&dev->ref);
	}
	mutex_unlock(&usrbd_devs_lock);
	return dev;
}

void usrbd_dev_put(struct usrbd_dev *dev)
{
	kref_put(&dev->ref, usrbd_dev_release);
}

int usrbd_disk_open(struct gendisk *disk)
{
	struct usrbd_dev *dev = disk->private_data;
	int ret = 0;

	spin_lock(&dev->state_lock);
	if (dev->destroy != USRBD_DESTROY_NONE)
		ret = -ENXIO;
	else
		dev->openers++;
	spin_unlock(&dev->state_lock);
	return ret;
}

void usrbd_disk_release(struct gendisk *disk)
{
	struct usrbd_dev *dev = disk->private_data;

	spin_lock(&dev->state_lock);
	dev->openers--;
	spin_unlock(&dev->state_lock);
}

/* The gendisk is gone, possibly long after destroy if it was held open. */
static void usrbd_free_disk(struct gendisk *disk)
{
	usrbd_dev_put(disk->private_data);
}

static const struct block_device_operations usrbd_bdops = {
	.owner		= THIS_MODULE,
	.open		= usrbd_bdops_open,
	.release	= usrbd_bdops_release,
	.free_disk	= usrbd_free_disk,
};

void usrbd_dev_server_change(struct usrbd_dev *dev, int delta)
{
	spin_lock(&dev->state_lock);
	dev->servers += delta;
	if (dev->state == USRBD_STATE_WAITING || dev->state == USRBD_STATE_LIVE)
		dev->state = dev->servers ? USRBD_STATE_LIVE : USRBD_STATE_WAITING;
	spin_unlock(&dev->state_lock);
}

/*
 * Empty (usrbdN), or "usrbd" and more of [a-z0-9_-]: a disk name outside
 * that prefix could squat another driver's name (sda, mmcblk0, nvme0n1).
 */
static bool usrbd_name_valid(const char *name)
{
	size_t i;

	if (name[0] && strncmp(name, "usrbd", 5))
		return false;
	for (i = 0; name[i]; i++)
		if (!islower(name[i]) && !isdigit(name[i]) &&
		    name[i] != '_' && name[i] != '-')
			return false;
	return true;
}

/* Returns why @c cannot be created, or NULL. */
static const char *usrbd_create_invalid(const struct usrbd_create *c)
{
	size_t i;

	if (c->abi_version != USRBD_ABI_VERSION)
		return "abi_version is not USRBD_ABI_VERSION";
	for (i = 0; i < ARRAY_SIZE(c->reserved); i++)
		if (c->reserved[i])
			return "reserved fields must be zero";
	if (c->flags & ~USRBD_F_ALL)
		return "unknown flags";
	if (c->index != USRBD_INDEX_AUTO && c->index >= usrbd_max_devices)
		return "index not below max_devices";
	if (!memchr(c->name, '\0', sizeof(c->name)))
		return "name is not NUL-terminated";
	if (!usrbd_name_valid(c->name))
		return "name must start with usrbd and hold only a-z, 0-9, '_' and '-'";
	if (c->logical_block_size < SECTOR_SIZE ||
	    c->logical_block_size > 4096 ||
	    !is_power_of_2(c->logical_block_size))
		return "logical_block_size must be 512, 1024, 2048 or 4096";
	if (c->physical_block_size < c->logical_block_size ||
	    c->physical_block_size > 4096 ||
	    !is_power_of_2(c->physical_block_size))
		return "physical_block_size must be a power of two, >= logical_block_size, <= 4096";
	if (!c->size || !IS_ALIGNED(c->size, c->logical_block_size) || c->size > (u64)LLONG_MAX)
		return "size must be a non-zero multiple of logical_block_size";
	if (!c->nr_queues || c->nr_queues > usrbd_max_queues())
		return "nr_queues must be 1 .. min(max_queues, online CPUs)";
	if (!c->queue_depth || c->queue_depth > USRBD_MAX_QUEUE_DEPTH)
		return "queue_depth must be 1 .. USRBD_MAX_QUEUE_DEPTH";
	/*
	 * The block layer needs a page per request at least (6.9+ warns and
	 * fails the allocation, older kernels raise the limit to a page and
	 * the larger requests would then fail here), and the tag buffer slots
	 * stay page aligned: 16 KiB on Pi 5 kernels, 64 KiB on some arm64.
	 */
	if (!c->max_io_bytes || !IS_ALIGNED(c->max_io_bytes, PAGE_SIZE) ||
	    c->max_io_bytes > USRBD_MAX_IO_BYTES)
		return "max_io_bytes must be a multiple of the page size, <= USRBD_MAX_IO_BYTES";
	if (c->timeout_ms > USRBD_MAX_TIMEOUT_MS)
		return "timeout_ms must be at most one hour";
	return NULL;
}

static bool usrbd_name_taken(const char *name)
{
	u32 i;

	for (i = 0; i < usrbd_max_devices; i++)
		if (usrbd_devs[i] && !strcmp(usrbd_devs[i]->name, name))
			return true;
	return false;
}

/* Choose index and name for a new device. Caller holds usrbd_devs_lock. */
static int usrbd_pick_slot(const struct usrbd_create *c, u32 *index, char *name)
{
	u32 i;

	lockdep_assert_held(&usrbd_devs_lock);
	if (c->index == USRBD_INDEX_AUTO) {
		for (i = 0; i < usrbd_max_devices; i++) {
			if (usrbd_devs[i])
				continue;
			if (c->name[0])
				break;
			/* A named device may already use this default name. */
			snprintf(name, USRBD_NAME_LEN, "usrbd%u", i);
			if (!usrbd_name_taken(name))
				break;
		}
		if (i == usrbd_max_devices)
			return -ENOSPC;
	} else {
		i = c->index;
		if (usrbd_devs[i])
			return -EEXIST;
	}
	if (c->name[0])
		strscpy(name, c->name, USRBD_NAME_LEN);
	else
		snprintf(name, USRBD_NAME_LEN, "usrbd%u", i);
	if (usrbd_name_taken(name))
		return -EEXIST;
	*index = i;
	return 0;
}

static int usrbd_dev_init_queues(struct usrbd_dev *dev)
{
	u32 i;

	dev->queues = kcalloc(dev->nr_queues, sizeof(*dev->queues), GFP_KERNEL);
	if (!dev->queues)
		return -ENOMEM;
	for (i = 0; i < dev->nr_queues; i++) {
		struct usrbd_queue *q = &dev->queues[i];

		q->dev = dev;
		q->index = i;
		spin_lock_init(&q->lock);
		INIT_LIST_HEAD(&q->fifo);
		init_waitqueue_head(&q->wait);
		atomic_set(&q->nr_active, 0);
		q->held = kcalloc(dev->queue_depth, sizeof(*q->held), GFP_KERNEL);
		if (!q->held)
			return -ENOMEM;
	}
	return 0;
}

static struct gendisk *usrbd_dev_alloc_disk(struct usrbd_dev *dev)
{
	unsigned int max_sectors = dev->max_io_bytes >> SECTOR_SHIFT;
	struct usrbd_limits lim = {
		.logical_block_size	= dev->logical_block_size,
		.physical_block_size	= dev->physical_block_size,
		.max_sectors		= max_sectors,
		.write_cache		= dev->flags & USRBD_F_FLUSH,
		.fua			= dev->flags & USRBD_F_FUA,
	};
	struct gendisk *disk;

	if (dev->flags & USRBD_F_DISCARD)
		lim.discard_sectors = max_sectors;
	if (dev->flags & USRBD_F_WRITE_ZEROES)
		lim.write_zeroes_sectors = max_sectors;

	disk = usrbd_alloc_disk(&dev->tag_set, &lim, dev);
	if (IS_ERR(disk))
		return disk;
	disk->fops = &usrbd_bdops;
	disk->private_data = dev;
	set_capacity(disk, dev->size >> SECTOR_SHIFT);
	if (dev->flags & USRBD_F_READ_ONLY)
		set_disk_ro(disk, true);
	return disk;
}

static void usrbd_writeback_work(struct work_struct *work);

int usrbd_dev_create(struct usrbd_create *c)
{
	struct blk_mq_tag_set *set;
	struct usrbd_dev *dev;
	const char *why;
	int ret;

	why = usrbd_create_invalid(c);
	if (why) {
		pr_warn_ratelimited("create: %s\n", why);
		return -EINVAL;
	}

	dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	kref_init(&dev->ref);
	spin_lock_init(&dev->state_lock);
	init_waitqueue_head(&dev->drain_wait);
	INIT_WORK(&dev->writeback_work, usrbd_writeback_work);
	init_completion(&dev->writeback_done);
	init_completion(&dev->destroyed);
	dev->state = USRBD_STATE_WAITING;
	dev->size = c->size;
	dev->logical_block_size = c->logical_block_size;
	dev->physical_block_size = c->physical_block_size;
	dev->nr_queues = c->nr_queues;
	dev->queue_depth = c->queue_depth;
	dev->max_io_bytes = c->max_io_bytes;
	dev->flags = c->flags;
	dev->timeout_ms = c->timeout_ms ?:
		clamp(READ_ONCE(usrbd_default_timeout_ms), 1U, USRBD_MAX_TIMEOUT_MS);

	ret = usrbd_dev_init_queues(dev);
	if (ret)
		goto err_free;

	set = &dev->tag_set;
	set->ops = &usrbd_mq_ops;
	set->nr_hw_queues = dev->nr_queues;
	set->queue_depth = dev->queue_depth;
	set->numa_node = NUMA_NO_NODE;
	set->cmd_size = sizeof(struct usrbd_cmd);
	set->flags = USRBD_TAG_SET_FLAGS;
	set->driver_data = dev;
	set->timeout = msecs_to_jiffies(dev->timeout_ms);
	ret = blk_mq_alloc_tag_set(set);
	if (ret)
		goto err_free;

	dev->disk = usrbd_dev_alloc_disk(dev);
	if (IS_ERR(dev->disk)) {
		ret = PTR_ERR(dev->disk);
		goto err_tag_set;
	}

	mutex_lock(&usrbd_devs_lock);
	ret = usrbd_pick_slot(c, &dev->index, dev->name);
	if (ret)
		goto err_unlock;
	strscpy(dev->disk->disk_name, dev->name, DISK_NAME_LEN);
	/*
	 * No partition scan now: it would read the disk, and no server can
	 * answer before create returns. A later BLKRRPART still scans.
	 */
	set_bit(GD_SUPPRESS_PART_SCAN, &dev->disk->state);
	ret = add_disk(dev->disk);
	clear_bit(GD_SUPPRESS_PART_SCAN, &dev->disk->state);
	if (ret)
		goto err_unlock;
	/* The gendisk's reference, dropped by usrbd_free_disk(). */
	kref_get(&dev->ref);
	usrbd_devs[dev->index] = dev;
	mutex_unlock(&usrbd_devs_lock);

	c->index = dev->index;
	memcpy(c->name, dev->name, sizeof(c->name));
	pr_info("%s: created, %llu bytes, %u queues of depth %u, flags %#x\n",
		dev->name, (unsigned long long)dev->size, dev->nr_queues,
		dev->queue_depth, dev->flags);
	return 0;

err_unlock:
	mutex_unlock(&usrbd_devs_lock);
	put_disk(dev->disk);
err_tag_set:
	blk_mq_free_tag_set(&dev->tag_set);
err_free:
	usrbd_dev_free(dev);
	return ret;
}

static bool usrbd_dev_idle(struct usrbd_dev *dev)
{
	u32 i;

	for (i = 0; i < dev->nr_queues; i++)
		if (usrbd_queue_active(&dev->queues[i]))
			return false;
	return true;
}

/*
 * A mounted filesystem (or any exclusive holder such as md or dm) would
 * lose the dirty pages it has not written yet: a graceful destroy leaves
 * such a disk alone. Plain opens (dd, fio, a USB gadget LUN) do not stop it.
 */
static bool usrbd_dev_claimed(struct usrbd_dev *dev)
{
	return READ_ONCE(dev->disk->part0->bd_holder);
}

/* Fail new I/O at submission from now on; once per device. */
static void usrbd_dev_mark_dead(struct usrbd_dev *dev)
{
	bool first;

	spin_lock(&dev->state_lock);
	first = !dev->dead;
	dev->dead = true;
	spin_unlock(&dev->state_lock);
	if (first)
		blk_mark_disk_dead(dev->disk);
}

/*
 * Fail new I/O at submission and everything queued or held now: whatever
 * a destroy waits for (write back, drain) then ends at once.
 */
static void usrbd_dev_cut(struct usrbd_dev *dev)
{
	u32 i;

	usrbd_dev_mark_dead(dev);
	for (i = 0; i < dev->nr_queues; i++)
		usrbd_queue_kill(&dev->queues[i]);
	wake_up_all(&dev->drain_wait);
}

/* A graceful destroy is cut short (deadline, fatal signal, force). */
static void usrbd_dev_cut_short(struct usrbd_dev *dev)
{
	spin_lock(&dev->state_lock);
	WRITE_ONCE(dev->destroy, USRBD_DESTROY_CUT);
	spin_unlock(&dev->state_lock);
	usrbd_dev_cut(dev);
}

/*
 * Graceful destroy, first step (a work item, so that the destroy's own
 * wait for it is killable and bounded by the deadline): write back every
 * partition's page cache, not only the whole disk's (a partition opened
 * plainly, e.g. a USB LUN on usrbd0p1, has its own), then flush through
 * the servers. open_mutex keeps the partition table still meanwhile.
 */
static void usrbd_writeback_work(struct work_struct *work)
{
	struct usrbd_dev *dev = container_of(work, struct usrbd_dev,
					     writeback_work);
	struct gendisk *disk = dev->disk;
	struct block_device *part;
	unsigned long idx;
	int ret = 0;

	mutex_lock(&disk->open_mutex);
	xa_for_each(&disk->part_tbl, idx, part) {
		ret = sync_blockdev(part);
		if (ret)
			break;
	}
	mutex_unlock(&disk->open_mutex);
	if (!ret && (dev->flags & USRBD_F_FLUSH))
		ret = blkdev_issue_flush(disk->part0);
	dev->writeback_ret = ret;
	complete(&dev->writeback_done);
}

/* Jiffies from now until @deadline, at least 1. */
static unsigned long usrbd_left(unsigned long deadline)
{
	return time_before(jiffies, deadline) ? deadline - jiffies : 1;
}

static bool usrbd_dev_drained(struct usrbd_dev *dev)
{
	return usrbd_dev_idle(dev) ||
	       READ_ONCE(dev->destroy) == USRBD_DESTROY_CUT;
}

/*
 * Graceful destroy: write back, flush, mark the disk dead, drain, all
 * within @timeout_ms. Returns 0 (drained); -EIO (write back or flush
 * failed: the device then stays); or, the destroy having been cut short, -ETIMEDOUT
 * (deadline), -EINTR (fatal signal) or -ECANCELED (a forced destroy).
 */
static int usrbd_dev_graceful(struct usrbd_dev *dev, unsigned int timeout_ms)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(timeout_ms);
	u32 servers;
	long left;

	spin_lock(&dev->state_lock);
	servers = dev->servers;
	spin_unlock(&dev->state_lock);

	/*
	 * Without a server nothing could persist the data; a closed block
	 * device has no dirty page cache left anyway (last close wrote it).
	 */
	if (servers) {
		reinit_completion(&dev->writeback_done);
		queue_work(system_unbound_wq, &dev->writeback_work);
		/* Completed by usrbd_writeback_work(). */
		left = wait_for_completion_killable_timeout(&dev->writeback_done,
							    usrbd_left(deadline));
		if (left <= 0) {
			usrbd_dev_cut_short(dev);
			/* Short now: every request it waits for has failed. */
			wait_for_completion(&dev->writeback_done);
			return left ? -EINTR : -ETIMEDOUT;
		}
		if (READ_ONCE(dev->destroy) == USRBD_DESTROY_CUT)
			return -ECANCELED;
		if (dev->writeback_ret)
			return -EIO;
	}
	/*
	 * What was written before is durable now. Plain openers (not a
	 * mount) see the disk go away: new I/O fails at submission, while
	 * the requests already in flight are still served.
	 */
	usrbd_dev_mark_dead(dev);
	/* Woken by usrbd_end_request() when a queue runs empty, and by a cut. */
	left = wait_event_killable_timeout(dev->drain_wait, usrbd_dev_drained(dev),
					   usrbd_left(deadline));
	if (left < 0)
		return -EINTR;
	if (!left)
		return -ETIMEDOUT;
	if (READ_ONCE(dev->destroy) == USRBD_DESTROY_CUT)
		return -ECANCELED;
	return 0;
}

/*
 * Remove the disk and drop the table's reference; end the claim reservation
 * of a graceful destroy (@claiming) once nothing can open the disk.
 */
static void usrbd_dev_remove(struct usrbd_dev *dev, bool fail_io, bool claiming)
{
	u32 i;

	if (fail_io)
		usrbd_dev_cut(dev);
	del_gendisk(dev->disk);
	/* Whoever waited to claim the disk now finds it gone. */
	if (claiming)
		bd_abort_claiming(dev->disk->part0, dev);
	/* Nothing is pending now; kill again to wake every server with GONE. */
	for (i = 0; i < dev->nr_queues; i++)
		usrbd_queue_kill(&dev->queues[i]);

	spin_lock(&dev->state_lock);
	dev->state = USRBD_STATE_DEAD;
	spin_unlock(&dev->state_lock);

	mutex_lock(&usrbd_devs_lock);
	usrbd_devs[dev->index] = NULL;
	mutex_unlock(&usrbd_devs_lock);

	pr_info("%s: removed\n", dev->name);
	put_disk(dev->disk);
	usrbd_dev_put(dev);
}

/*
 * A graceful destroy could not write back, or found the disk claimed: the
 * device keeps serving, unless a cut came in the meantime. Returns whether
 * it was kept.
 */
static bool usrbd_dev_keep(struct usrbd_dev *dev)
{
	bool keep;

	spin_lock(&dev->state_lock);
	keep = dev->destroy == USRBD_DESTROY_GRACEFUL;
	if (keep) {
		WRITE_ONCE(dev->destroy, USRBD_DESTROY_NONE);
		dev->state = dev->servers ? USRBD_STATE_LIVE : USRBD_STATE_WAITING;
	}
	spin_unlock(&dev->state_lock);
	return keep;
}

int usrbd_dev_destroy(const struct usrbd_destroy *d)
{
	bool force = d->flags & USRBD_DESTROY_FORCE;
	unsigned int timeout_ms = d->timeout_ms ?: READ_ONCE(usrbd_destroy_timeout_ms);
	struct usrbd_dev *dev;
	bool claiming = false;
	bool cut = false;
	u32 openers = 0;
	int ret = 0;

	if (d->reserved || (d->flags & ~USRBD_DESTROY_FORCE)) {
		pr_warn_ratelimited("destroy: unknown flags or non-zero reserved\n");
		return -EINVAL;
	}

	mutex_lock(&usrbd_devs_lock);
	dev = d->index < usrbd_max_devices ? usrbd_devs[d->index] : NULL;
	if (!dev) {
		mutex_unlock(&usrbd_devs_lock);
		return -ENODEV;
	}
	spin_lock(&dev->state_lock);
	if (dev->destroy == USRBD_DESTROY_GRACEFUL && force) {
		/* Another call runs a graceful destroy: cut it short. */
		WRITE_ONCE(dev->destroy, USRBD_DESTROY_CUT);
		cut = true;
	} else if (dev->destroy != USRBD_DESTROY_NONE) {
		ret = -EBUSY;
	} else if (!force && usrbd_dev_claimed(dev)) {
		openers = dev->openers;
		ret = -EBUSY;
	} else {
		WRITE_ONCE(dev->destroy, force ? USRBD_DESTROY_CUT :
				       USRBD_DESTROY_GRACEFUL);
		dev->state = USRBD_STATE_DRAINING;
	}
	spin_unlock(&dev->state_lock);
	if (!ret)
		kref_get(&dev->ref);
	mutex_unlock(&usrbd_devs_lock);
	if (ret) {
		if (openers)
			pr_info_ratelimited("%s: destroy refused: claimed (mounted), open %u times\n",
					    dev->name, openers);
		return ret;
	}

	if (cut) {
		usrbd_dev_cut(dev);
		/* Short: the graceful destroy has nothing left to wait for. */
		ret = wait_for_completion_killable(&dev->destroyed) ? -EINTR : 0;
		usrbd_dev_put(dev);
		return ret;
	}
	if (force) {
		usrbd_dev_remove(dev, true, false);
		usrbd_dev_put(dev);
		return 0;
	}
	/*
	 * Reserve the claim of the disk: a mount (or md, dm) of the disk or
	 * of a partition, even one already open, now waits until the destroy
	 * is over and then finds the disk gone; one that holds it already
	 * makes this fail.
	 */
	ret = usrbd_prepare_to_claim(dev->disk->part0, dev);
	if (ret) {
		if (usrbd_dev_keep(dev)) {
			usrbd_dev_put(dev);
			return -EBUSY;
		}
	} else {
		claiming = true;
		ret = usrbd_dev_graceful(dev, timeout_ms);
		if (ret == -EIO && usrbd_dev_keep(dev)) {
			/* Data could not be made durable: keep the device. */
			bd_abort_claiming(dev->disk->part0, dev);
			pr_warn_ratelimited("%s: destroy aborted: write back or flush failed\n",
					    dev->name);
			usrbd_dev_put(dev);
			return -EIO;
		}
	}
	if (ret)
		pr_warn("%s: destroy cut short (%d), failing what is left\n",
			dev->name, ret);
	usrbd_dev_remove(dev, ret != 0, claiming);
	complete_all(&dev->destroyed);
	usrbd_dev_put(dev);
	return ret;
}

int usrbd_dev_list(struct usrbd_list *l)
{
	u32 i;

	mutex_lock(&usrbd_devs_lock);
	for (i = 0; i < usrbd_max_devices; i++)
		if (usrbd_devs[i])
			l->index[l->count++] = i;
	mutex_unlock(&usrbd_devs_lock);
	return 0;
}

void usrbd_dev_status(struct usrbd_dev *dev, struct usrbd_status *st)
{
	u32 queued = 0, active = 0;
	u32 i, op;

	st->index = dev->index;
	memcpy(st->name, dev->name, sizeof(st->name));
	st->size = dev->size;
	st->logical_block_size = dev->logical_block_size;
	st->physical_block_size = dev->physical_block_size;
	st->nr_queues = dev->nr_queues;
	st->queue_depth = dev->queue_depth;
	st->max_io_bytes = dev->max_io_bytes;
	st->timeout_ms = dev->timeout_ms;
	st->flags = dev->flags;

	spin_lock(&dev->state_lock);
	st->state = dev->state;
	st->openers = dev->openers;
	st->servers = dev->servers;
	spin_unlock(&dev->state_lock);

	for (i = 0; i < dev->nr_queues; i++) {
		struct usrbd_queue *q = &dev->queues[i];

		queued += READ_ONCE(q->nr_queued);
		active += usrbd_queue_active(q);
		st->timeouts += atomic64_read(&q->stats.timeouts);
		st->rejected += atomic64_read(&q->stats.rejected);
		for (op = 0; op < USRBD_OP_COUNT; op++) {
			struct usrbd_op_counters *c = &q->stats.ops[op];

			st->ops[op].submitted += atomic64_read(&c->submitted);
			st->ops[op].completed += atomic64_read(&c->completed);
			st->ops[op].errors += atomic64_read(&c->errors);
			st->ops[op].bytes += atomic64_read(&c->bytes);
		}
	}
	st->queued = queued;
	/* Read without a common lock: never report a negative count. */
	st->inflight = active > queued ? active - queued : 0;
}

/* Module exit: force-destroy whatever remains. */
void usrbd_destroy_all(void)
{
	struct usrbd_destroy d = { .flags = USRBD_DESTROY_FORCE };

	for (d.index = 0; d.index < usrbd_max_devices; d.index++)
		usrbd_dev_destroy(&d);
}
