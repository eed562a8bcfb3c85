/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * usrbd: block devices served from userspace.
 *
 * This header is the one definition of the user/kernel contract. Every
 * structure uses fixed-width types, explicit zeroed padding and 8-byte
 * aligned 64-bit fields, so its layout is identical on i386, armhf, arm64
 * and x86_64 and 32-bit userspace works unchanged on a 64-bit kernel.
 * User pointers travel as __u64.
 *
 * Flow:
 *   open("/dev/usrbd-control")              root only
 *   USRBD_IOC_CREATE                        -> /dev/usrbdN (or the given name)
 *   USRBD_IOC_ATTACH (one per hw queue)     -> a server fd bound to that
 *                                              device and queue
 *   loop: USRBD_IOC_SERVE on the server fd  complete N answers, fetch up to M
 *                                              new requests, in one call
 *   USRBD_IOC_DESTROY                       graceful (flush, drain, remove)
 *                                              or forced
 */
#ifndef _UAPI_LINUX_USRBD_H
#define _UAPI_LINUX_USRBD_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define USRBD_ABI_VERSION	2
#define USRBD_CONTROL_NAME	"usrbd-control"
#define USRBD_IOCTL_MAGIC	0xBD

/* Hard limits; the module may advertise smaller ones in usrbd_version. */
#define USRBD_MAX_DEVICES	256
#define USRBD_NAME_LEN		32	/* including the terminating NUL */
#define USRBD_MAX_QUEUES	64
#define USRBD_MAX_QUEUE_DEPTH	1024
#define USRBD_MAX_IO_BYTES	(1U << 20)
#define USRBD_MAX_BATCH		1024	/* answers or requests per SERVE */

/* Pass as usrbd_create.index to let the module pick the lowest free index. */
#define USRBD_INDEX_AUTO	0xffffffffU

/* Pass as usrbd_serve.wait_ms to sleep until work arrives, however long. */
#define USRBD_WAIT_FOREVER	0xffffffffU

/* Device feature flags: usrbd_create.flags, usrbd_version.features. */
#define USRBD_F_FLUSH		(1U << 0) /* volatile write cache: FLUSH reaches the server */
#define USRBD_F_FUA		(1U << 1) /* forced unit access writes */
#define USRBD_F_DISCARD		(1U << 2)
#define USRBD_F_WRITE_ZEROES	(1U << 3)
#define USRBD_F_READ_ONLY	(1U << 4)
#define USRBD_F_ALL		(USRBD_F_FLUSH | USRBD_F_FUA | USRBD_F_DISCARD | \
				 USRBD_F_WRITE_ZEROES | USRBD_F_READ_ONLY)

/* Request operations (usrbd_request.op, usrbd_completion.op). */
#define USRBD_OP_READ		0
#define USRBD_OP_WRITE		1
#define USRBD_OP_FLUSH		2
#define USRBD_OP_DISCARD	3
#define USRBD_OP_WRITE_ZEROES	4
#define USRBD_OP_COUNT		5

/* Request flags (usrbd_request.flags). */
#define USRBD_REQ_FUA		(1U << 0) /* durable before answering */
#define USRBD_REQ_NOUNMAP	(1U << 1) /* WRITE_ZEROES: keep blocks allocated */

/* Device states (usrbd_status.state). */
#define USRBD_STATE_WAITING	0 /* created, no server attached */
#define USRBD_STATE_LIVE	1 /* at least one server attached */
#define USRBD_STATE_DRAINING	2 /* graceful destroy in progress */
#define USRBD_STATE_DEAD	3 /* removed; servers get USRBD_EV_GONE */

/* Destroy flags (usrbd_destroy.flags). */
#define USRBD_DESTROY_FORCE	(1U << 0) /* fail what is left, do not wait */

/* Attach flags (usrbd_attach.flags, usrbd_version.attach_flags). */
#define USRBD_ATTACH_LINEAR	(1U << 0) /* the buffer is the whole device */

/* Events returned by SERVE (usrbd_serve.events). */
#define USRBD_EV_GONE		(1U << 0) /* device destroyed: stop serving */

/* USRBD_IOC_VERSION: what this module speaks and allows. */
struct usrbd_version {
	__u32 abi_version;	/* USRBD_ABI_VERSION */
	__u32 features;		/* USRBD_F_* supported */
	__u32 max_devices;
	__u32 max_queues;
	__u32 max_queue_depth;
	__u32 max_io_bytes;
	__u32 max_batch;
	__u32 attach_flags;	/* USRBD_ATTACH_* supported */
};

/* USRBD_IOC_CREATE: in: the device wanted; out: index and name given. */
struct usrbd_create {
	__u32 abi_version;	/* must be USRBD_ABI_VERSION */
	__u32 index;		/* in: wanted index or USRBD_INDEX_AUTO; out: index */
	char name[USRBD_NAME_LEN]; /* in: disk name or empty for usrbdN; out: name */
	__aligned_u64 size;	/* bytes, a multiple of logical_block_size */
	__u32 logical_block_size;  /* 512, 1024, 2048 or 4096 */
	__u32 physical_block_size; /* >= logical, power of two, <= 4096 */
	__u32 nr_queues;	/* 1 .. min(max_queues, online CPUs) */
	__u32 queue_depth;	/* 1 .. max_queue_depth */
	__u32 max_io_bytes;	/* per request, <= max_io_bytes, a multiple of
				 * the kernel's page size: sysconf(_SC_PAGESIZE),
				 * 4096, 16384 on Pi 5 kernels (EINVAL if not)
				 */
	__u32 timeout_ms;	/* per request; 0 selects the module default */
	__u32 flags;		/* USRBD_F_* */
	__u32 reserved[5];	/* must be zero */
};

/* USRBD_IOC_DESTROY */
struct usrbd_destroy {
	__u32 index;
	__u32 flags;		/* USRBD_DESTROY_* */
	__u32 timeout_ms;	/* graceful drain deadline; 0 selects the default */
	__u32 reserved;		/* must be zero */
};

/* USRBD_IOC_LIST: indices of the devices that exist, ascending. */
struct usrbd_list {
	__u32 count;
	__u32 reserved;
	__u32 index[USRBD_MAX_DEVICES];
};

/* Counters of one operation, since create. */
struct usrbd_op_stats {
	__aligned_u64 submitted;	/* queued by the block layer */
	__aligned_u64 completed;	/* answered with success */
	__aligned_u64 errors;		/* answered with an error, timed out or failed */
	__aligned_u64 bytes;		/* payload of successful requests */
};

/* USRBD_IOC_STATUS: in: index; out: the rest. */
struct usrbd_status {
	__u32 index;
	__u32 state;		/* USRBD_STATE_* */
	char name[USRBD_NAME_LEN];
	__aligned_u64 size;
	__u32 logical_block_size;
	__u32 physical_block_size;
	__u32 nr_queues;
	__u32 queue_depth;
	__u32 max_io_bytes;
	__u32 timeout_ms;
	__u32 flags;		/* USRBD_F_* */
	__u32 openers;		/* opens of the block device */
	__u32 servers;		/* attached server fds */
	__u32 queued;		/* requests waiting to be fetched */
	__u32 inflight;		/* requests fetched, not yet answered */
	__u32 reserved;
	__aligned_u64 timeouts;		/* requests failed by the timeout */
	__aligned_u64 rejected;		/* invalid answers refused with EINVAL */
	struct usrbd_op_stats ops[USRBD_OP_COUNT];
};

/*
 * USRBD_IOC_ATTACH: returns a new server fd (O_CLOEXEC) bound to one
 * hardware queue of one device. One server per queue at a time (EBUSY).
 *
 * The buffer belongs to the server. By default request data for tag T
 * lives at buf_addr + T * max_io_bytes. With USRBD_ATTACH_LINEAR the
 * buffer holds the device itself: data for device offset O lives at
 * buf_addr + O, so a server that keeps the device in memory copies
 * nothing. Either way WRITE data is copied there when the request is
 * fetched and READ data from there when the answer is given.
 */
struct usrbd_attach {
	__u32 index;
	__u32 queue;
	__aligned_u64 buf_addr;	/* user address */
	__aligned_u64 buf_len;	/* >= queue_depth * max_io_bytes, or the size if LINEAR */
	__u32 flags;		/* USRBD_ATTACH_* */
	__u32 reserved;		/* must be zero */
};

/*
 * A request handed to the server. The cookie names this one fetch: the
 * same request fetched again (after a re-attach) or a later request with
 * the same tag gets another, so an answer that carries it can only ever
 * complete the fetch it was meant for.
 */
struct usrbd_request {
	__u32 tag;		/* 0 .. queue_depth - 1, unique while in flight */
	__u32 op;		/* USRBD_OP_* */
	__u32 flags;		/* USRBD_REQ_* */
	__u32 len;		/* bytes; 0 for FLUSH */
	__aligned_u64 offset;	/* bytes from the start of the device */
	__aligned_u64 cookie;	/* copy into the answer */
};

/* The server's answer to one request. */
struct usrbd_completion {
	__u32 tag;
	__u32 op;		/* must equal the request's op */
	__s32 result;		/* 0 or a negative errno, see below */
	__u32 len;		/* must equal the request's len when result is 0 */
	__aligned_u64 cookie;	/* the request's cookie */
};

/*
 * Errors a server may answer with; any other negative errno reaches the
 * submitter as EIO. -ENOSPC and -EDQUOT: out of space; -EOPNOTSUPP: the
 * op is not supported; -ETIMEDOUT: the backend timed out; -ENODATA,
 * -EILSEQ, -EBADMSG: the medium holds no valid data there (read errors);
 * -EIO, -ENOMEM: everything else.
 */

/*
 * USRBD_IOC_SERVE on a server fd: first apply nr_completions answers in
 * order, then fetch up to max_requests requests, sleeping up to wait_ms
 * if none is queued. Returns 0 with:
 *   nr_completed  answers applied;
 *   nr_requests   requests written to the requests array (0 if the wait
 *                 timed out, a signal is pending, or the device is gone);
 *   events        USRBD_EV_*.
 * An invalid answer (unknown tag, tag not in flight, wrong op, len or
 * cookie) fails the call with EINVAL; nr_completed then tells how many
 * answers before it were applied, and no request is fetched. No other
 * request is disturbed.
 *
 * Ownership: a fetched request stays the server's until it answers it or
 * its fd is closed; the module never ends it under the server's feet, so
 * the tag and the buffer slot are not reused meanwhile. If one of the
 * server's requests times out, the module fails the server instead: the
 * timed-out request ends with ETIMEDOUT, the others it held are queued
 * again for the next server, and every later SERVE on that fd fails with
 * ENOTCONN (answers included, none applied). The server then attaches again
 * (a new fd) to go on serving. Closing a server fd (exit, crash) queues its
 * held requests again the same way, and a new server may attach at once.
 */
struct usrbd_serve {
	__aligned_u64 completions;	/* user address of usrbd_completion[] */
	__aligned_u64 requests;		/* user address of usrbd_request[] */
	__u32 nr_completions;	/* in, <= max_batch */
	__u32 max_requests;	/* in, <= max_batch */
	__u32 wait_ms;		/* in: 0 = poll, USRBD_WAIT_FOREVER = no limit */
	__u32 nr_completed;	/* out */
	__u32 nr_requests;	/* out */
	__u32 events;		/* out: USRBD_EV_* */
};

/* Control device ioctls. */
#define USRBD_IOC_VERSION _IOR(USRBD_IOCTL_MAGIC, 0x00, struct usrbd_version)
#define USRBD_IOC_CREATE  _IOWR(USRBD_IOCTL_MAGIC, 0x01, struct usrbd_create)
#define USRBD_IOC_DESTROY _IOW(USRBD_IOCTL_MAGIC, 0x02, struct usrbd_destroy)
#define USRBD_IOC_LIST    _IOR(USRBD_IOCTL_MAGIC, 0x03, struct usrbd_list)
#define USRBD_IOC_STATUS  _IOWR(USRBD_IOCTL_MAGIC, 0x04, struct usrbd_status)
#define USRBD_IOC_ATTACH  _IOW(USRBD_IOCTL_MAGIC, 0x05, struct usrbd_attach)

/* Server fd ioctls. */
#define USRBD_IOC_SERVE   _IOWR(USRBD_IOCTL_MAGIC, 0x10, struct usrbd_serve)

#endif /* _UAPI_LINUX_USRBD_H */
