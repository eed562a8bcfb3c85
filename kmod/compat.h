/* SPDX-License-Identifier: GPL-2.0 */
/*
 * usrbd: the kernel API differences between the kernels the module builds
 * against (6.1 to 6.12 and later). Every difference lives here; the
 * USRBD_HAVE_* macros come from the header probes in Kbuild.
 */
#ifndef USRBD_COMPAT_H
#define USRBD_COMPAT_H

#include <linux/blk-mq.h>
#include <linux/blkdev.h>

#include "usrbd.h"

/* Queue limits wanted for a device, whatever the kernel's way to set them. */
struct usrbd_limits {
	unsigned int logical_block_size;
	unsigned int physical_block_size;
	unsigned int max_sectors;
	unsigned int discard_sectors;		/* 0: no DISCARD */
	unsigned int write_zeroes_sectors;	/* 0: no WRITE_ZEROES */
	bool write_cache;
	bool fua;
};

#ifdef USRBD_HAVE_LIMIT_FEATURES
/*
 * 6.11 ("block: move the ... flag to queue_limits" series) moved the write
 * cache, FUA and rotational flags into queue_limits.features, and removed
 * the blk_queue_* limit setters; limits are passed at allocation.
 */
static inline struct gendisk *usrbd_alloc_disk(struct blk_mq_tag_set *set,
					       const struct usrbd_limits *l,
					       void *data)
{
	struct queue_limits lim = {
		.logical_block_size	= l->logical_block_size,
		.physical_block_size	= l->physical_block_size,
		.io_min			= l->physical_block_size,
		.max_hw_sectors		= l->max_sectors,
		.max_segments		= USHRT_MAX,
		.max_hw_discard_sectors	= l->discard_sectors,
		.max_write_zeroes_sectors = l->write_zeroes_sectors,
	};

	if (l->discard_sectors)
		lim.discard_granularity = l->logical_block_size;
	if (l->write_cache)
		lim.features |= BLK_FEAT_WRITE_CACHE;
	if (l->write_cache && l->fua)
		lim.features |= BLK_FEAT_FUA;
	return blk_mq_alloc_disk(set, &lim, data);
}
#else
static inline struct gendisk *usrbd_alloc_disk(struct blk_mq_tag_set *set,
					       const struct usrbd_limits *l,
					       void *data)
{
	struct request_queue *q;
	struct gendisk *disk;

#ifdef USRBD_HAVE_ALLOC_DISK_LIMITS
	/* 6.9 added the queue_limits argument to blk_mq_alloc_disk(). */
	disk = blk_mq_alloc_disk(set, NULL, data);
#else
	disk = blk_mq_alloc_disk(set, data);
#endif
	if (IS_ERR(disk))
		return disk;
	q = disk->queue;
	blk_queue_logical_block_size(q, l->logical_block_size);
	blk_queue_physical_block_size(q, l->physical_block_size);
	blk_queue_io_min(q, l->physical_block_size);
	blk_queue_max_hw_sectors(q, l->max_sectors);
	blk_queue_max_segments(q, USHRT_MAX);
	if (l->discard_sectors) {
		blk_queue_max_discard_sectors(q, l->discard_sectors);
		q->limits.discard_granularity = l->logical_block_size;
	}
	if (l->write_zeroes_sectors)
		blk_queue_max_write_zeroes_sectors(q, l->write_zeroes_sectors);
	blk_queue_write_cache(q, l->write_cache, l->write_cache && l->fua);
	/* Before 6.11 a queue is rotational unless told otherwise. */
	blk_queue_flag_set(QUEUE_FLAG_NONROT, q);
	blk_queue_flag_clear(QUEUE_FLAG_ADD_RANDOM, q);
	return disk;
}
#endif

#ifdef USRBD_HAVE_OPEN_GENDISK
/*
 * 6.5 ("block: pass a gendisk to ->open", "block: remove the unused mode
 * argument to ->release") changed the block_device_operations signatures.
 */
static inline int usrbd_bdops_open(struct gendisk *disk, blk_mode_t mode)
{
	return usrbd_disk_open(disk);
}

static inline void usrbd_bdops_release(struct gendisk *disk)
{
	usrbd_disk_release(disk);
}
#else
static inline int usrbd_bdops_open(struct block_device *bdev, fmode_t mode)
{
	return usrbd_disk_open(bdev->bd_disk);
}

static inline void usrbd_bdops_release(struct gendisk *disk, fmode_t mode)
{
	usrbd_disk_release(disk);
}
#endif

#ifdef USRBD_HAVE_SHOULD_MERGE
#define USRBD_TAG_SET_FLAGS	BLK_MQ_F_SHOULD_MERGE
#else
/* 6.14 ("block: remove BLK_MQ_F_SHOULD_MERGE"): merging is the default. */
#define USRBD_TAG_SET_FLAGS	0
#endif

#ifdef USRBD_HAVE_CLAIM_HOPS
/* 6.5 ("block: introduce holder ops") added the holder's ops argument. */
static inline int usrbd_prepare_to_claim(struct block_device *bdev, void *holder)
{
	return bd_prepare_to_claim(bdev, holder, NULL);
}
#else
static inline int usrbd_prepare_to_claim(struct block_device *bdev, void *holder)
{
	return bd_prepare_to_claim(bdev, holder);
}
#endif

#endif /* USRBD_COMPAT_H */
