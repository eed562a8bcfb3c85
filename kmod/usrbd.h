/* SPDX-License-Identifier: GPL-2.0 */
/*
 * usrbd: structures shared by the parts of the module.
 *
 * A device (struct usrbd_dev) owns one blk-mq tag set and one gendisk, and
 * one struct usrbd_queue per hardware queue. Each queue is served by at
 * most one server fd (struct usrbd_server). A request moves through the
 * states of enum usrbd_cmd_state; every move happens under the queue's
 * lock, and whoever moves a request to USRBD_CMD_IDLE ends it.
 */
#ifndef USRBD_H
#define USRBD_H

#include <linux/atomic.h>
#include <linux/blk-mq.h>
#include <linux/completion.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/usrbd.h>

/* Answers or requests moved per copy_{from,to}_user in SERVE (on the stack). */
#define USRBD_SERVE_CHUNK	16

/* Longest per-request timeout accepted at create: one hour. */
#define USRBD_MAX_TIMEOUT_MS	3600000U

enum usrbd_cmd_state {
	USRBD_CMD_IDLE,		/* not queued, or being ended */
	USRBD_CMD_QUEUED,	/* on usrbd_queue.fifo, waiting to be fetched */
	USRBD_CMD_FETCHING,	/* a SERVE call copies it to the server */
	USRBD_CMD_HELD,		/* handed to the server, waiting for its answer */
	USRBD_CMD_COMPLETING,	/* a SERVE call applies the server's answer */
};

/* Per-request data, allocated by blk-mq with the request (tag_set.cmd_size). */
struct usrbd_cmd {
	struct list_head node;	/* on usrbd_queue.fifo while QUEUED */
	enum usrbd_cmd_state state;
	u32 op;			/* USRBD_OP_* */
	u32 flags;		/* USRBD_REQ_* */
	u32 len;		/* payload bytes, 0 for FLUSH */
	u32 tag;		/* index into usrbd_queue.held while FETCHING/HELD */
	u64 cookie;		/* of the current fetch; answers must carry it */
};

struct usrbd_op_counters {
	atomic64_t submitted;
	atomic64_t completed;
	atomic64_t errors;
	atomic64_t bytes;
};

struct usrbd_queue_stats {
	struct usrbd_op_counters ops[USRBD_OP_COUNT];
	atomic64_t timeouts;
	atomic64_t rejected;
};

struct mm_struct;
struct usrbd_dev;

/*
 * A server fd (server.c), bound to one queue of one device. It serves
 * while it is its queue's server; once unbound (a request it held timed
 * out, or an orphan replaced) every SERVE on it fails with ENOTCONN.
 */
struct usrbd_server {
	struct usrbd_dev *dev;
	struct usrbd_queue *q;
	u64 buf_addr;
	/* USRBD_ATTACH_LINEAR: the buffer is the device, addressed by offset. */
	bool linear;
	/* The address space buf_addr belongs to; SERVE runs only there. */
	struct mm_struct *mm;
};

struct usrbd_queue {
	struct usrbd_dev *dev;
	unsigned int index;
	/*
	 * Protects fifo, nr_queued, held[], the state of every request of
	 * this queue, server (and its state), next_cookie and dead. Taken
	 * from queue_rq (any context), so always with interrupts disabled.
	 * Never held across a user copy. nr_queued, server and dead are also
	 * read without it (wait conditions, status): written with WRITE_ONCE.
	 */
	spinlock_t lock;
	struct list_head fifo;		/* QUEUED requests, oldest first */
	unsigned int nr_queued;		/* length of fifo */
	/*
	 * tag -> request for FETCHING and HELD requests: the only way an
	 * answer finds its request.
	 */
	struct request **held;
	struct usrbd_server *server;	/* the attached server, or NULL */
	u64 next_cookie;		/* the last cookie handed out */
	bool dead;			/* no more I/O; servers get USRBD_EV_GONE */
	/*
	 * Servers sleep here in SERVE until a request is queued, dead is set
	 * or their server is unbound.
	 */
	wait_queue_head_t wait;
	atomic_t nr_active;		/* accepted by queue_rq, not yet ended */
	struct usrbd_queue_stats stats;
} ____cacheline_aligned_in_smp;

enum usrbd_destroy_state {
	USRBD_DESTROY_NONE,	/* no destroy running */
	USRBD_DESTROY_GRACEFUL,	/* writing back, flushing, draining */
	USRBD_DESTROY_CUT,	/* forced, or the graceful one cut short: fail all */
};

struct usrbd_dev {
	/*
	 * References: the device table (until destroy), the gendisk (until
	 * free_disk), each server fd, and a destroy in progress.
	 */
	struct kref ref;
	u32 index;
	char name[USRBD_NAME_LEN];
	u64 size;
	u32 logical_block_size;
	u32 physical_block_size;
	u32 nr_queues;
	u32 queue_depth;
	u32 max_io_bytes;
	u32 timeout_ms;
	u32 flags;			/* USRBD_F_* */

	struct blk_mq_tag_set tag_set;
	struct gendisk *disk;
	struct usrbd_queue *queues;

	/* Protects state, openers, servers, destroy and dead. */
	spinlock_t state_lock;
	u32 state;			/* USRBD_STATE_* */
	u32 openers;
	u32 servers;
	enum usrbd_destroy_state destroy; /* not NONE: opens fail */
	bool dead;			/* blk_mark_disk_dead() was called */

	/*
	 * A graceful destroy sleeps here until no request is active or the
	 * destroy is cut short.
	 */
	wait_queue_head_t drain_wait;
	/* A graceful destroy's write back runs here, so its wait is killable. */
	struct work_struct writeback_work;
	int writeback_ret;
	/* Completed by writeback_work; the graceful destroy waits on it. */
	struct completion writeback_done;
	/* Completed when a graceful destroy is over; a cutting force waits. */
	struct completion destroyed;
};

/* main.c */
extern unsigned int usrbd_max_devices;
extern unsigned int usrbd_default_timeout_ms;
extern unsigned int usrbd_destroy_timeout_ms;
extern unsigned int usrbd_poll_spin_us;
unsigned int usrbd_max_queues(void);

/* ctrl.c */
int usrbd_ctrl_register(void);
void usrbd_ctrl_unregister(void);

/* queue.c */
extern const struct blk_mq_ops usrbd_mq_ops;
u64 usrbd_rq_offset(struct request *rq, const struct usrbd_cmd *cmd);
bool usrbd_copy_data(struct request *rq, void __user *ubuf, bool to_server);
void usrbd_end_request(struct usrbd_queue *q, struct request *rq,
		       blk_status_t status);
void usrbd_fail_list(struct usrbd_queue *q, struct list_head *list,
		     blk_status_t status);
void usrbd_queue_kill(struct usrbd_queue *q);
bool usrbd_queue_unbind(struct usrbd_queue *q, struct usrbd_server *srv);
void usrbd_queue_detach(struct usrbd_queue *q, struct usrbd_server *srv);
unsigned int usrbd_queue_active(struct usrbd_queue *q);

/* server.c */
int usrbd_server_attach(struct usrbd_dev *dev, const struct usrbd_attach *a);

/* lifecycle.c */
int usrbd_lifecycle_init(void);
void usrbd_lifecycle_exit(void);
int usrbd_dev_create(struct usrbd_create *c);
int usrbd_dev_destroy(const struct usrbd_destroy *d);
struct usrbd_dev *usrbd_dev_get(u32 index);
void usrbd_dev_put(struct usrbd_dev *dev);
int usrbd_dev_list(struct usrbd_list *l);
void usrbd_dev_status(struct usrbd_dev *dev, struct usrbd_status *st);
void usrbd_dev_server_change(struct usrbd_dev *dev, int delta);
void usrbd_destroy_all(void);
int usrbd_disk_open(struct gendisk *disk);
void usrbd_disk_release(struct gendisk *disk);

#endif /* USRBD_H */
