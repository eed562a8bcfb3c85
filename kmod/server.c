// SPDX-License-Identifier: GPL-2.0
/*
 * usrbd: server fds and the SERVE ioctl.
 *
 * ATTACH (from the control device) binds a new anonymous-inode fd to one
 * hardware queue of one device; the fd holds a device reference. SERVE on
 * that fd first applies the server's answers, then hands out new requests,
 * sleeping if there are none. Request data moves exactly once each way
 * (copy.c), between the bio pages and the server's buffer at
 * buf_addr + tag * max_io_bytes, or buf_addr + offset for a linear buffer:
 * WRITE data when the request is fetched, READ data when its answer is
 * applied. No user copy happens under a
 * spinlock: a request being copied is marked FETCHING or COMPLETING so
 * that nobody else (timeout, server death, destroy) ends it meanwhile.
 * Those copies never take a page fault, since a fault may wait on anything
 * (a userfaultfd, a file mapping, even this very device) and the request
 * could then neither complete nor time out: a copy that would fault gives
 * the request back (QUEUED or HELD), faults the buffer in, and tries again.
 *
 * Every request fetched gets a new cookie, and an answer must carry it: an
 * answer meant for an earlier fetch of the same tag is refused. A server
 * the module unbound (queue.c) gets ENOTCONN for every call.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/anon_inodes.h>
#include <linux/blk-mq.h>
#include <linux/err.h>
#include <linux/fs.h>
#include <linux/ktime.h>
#include <linux/pagemap.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "usrbd.h"

/*
 * Fault-ins per SERVE step before giving up with EFAULT: a page can be lost
 * again between fault-in and copy (reclaim), but not forever.
 */
#define USRBD_FAULT_RETRIES	8

/* Where the data of @rq lives in the server's memory. */
static void __user *usrbd_server_buf(struct usrbd_server *srv,
				     struct request *rq,
				     const struct usrbd_cmd *cmd)
{
	if (srv->linear)
		return u64_to_user_ptr(srv->buf_addr + usrbd_rq_offset(rq, cmd));
	return u64_to_user_ptr(srv->buf_addr +
			       (u64)cmd->tag * srv->dev->max_io_bytes);
}

/*
 * The server's errno as the submitter will see it: only errors a block
 * device may report (errno_to_blk_status() would turn -EAGAIN into
 * BLK_STS_AGAIN, meant for REQ_NOWAIT, and -ENOLINK into a multipath
 * transport error); everything else is an I/O error.
 */
static blk_status_t usrbd_result_status(s32 result)
{
	switch (result) {
	case -ENOSPC:
	case -EDQUOT:
		return BLK_STS_NOSPC;
	case -EOPNOTSUPP:
		return BLK_STS_NOTSUPP;
	case -ETIMEDOUT:
		return BLK_STS_TIMEOUT;
	case -ENODATA:
	case -EBADMSG:
	case -EILSEQ:
		return BLK_STS_MEDIUM;
	default:
		return BLK_STS_IOERR;
	}
}

static int usrbd_reject(struct usrbd_queue *q, const struct usrbd_completion *c,
			const char *why)
{
	atomic64_inc(&q->stats.rejected);
	pr_warn_ratelimited("%s: queue %u: answer for tag %u refused: %s\n",
			    q->dev->name, q->index, c->tag, why);
	return -EINVAL;
}

/*
 * Give requests taken by a failed fetch (or an answer that could not be
 * applied) back to the head of the FIFO, in their order, or fail them if
 * the queue died meanwhile. They are FETCHING or COMPLETING, in held[]
 * or not.
 */
static void usrbd_requeue(struct usrbd_queue *q, struct request **rqs,
			  unsigned int n)
{
	LIST_HEAD(victims);
	bool queued = false;

	spin_lock_irq(&q->lock);
	while (n--) {
		struct usrbd_cmd *cmd = blk_mq_rq_to_pdu(rqs[n]);

		if (q->held[cmd->tag] == rqs[n])
			q->held[cmd->tag] = NULL;
		if (q->dead) {
			cmd->state = USRBD_CMD_IDLE;
			list_add(&cmd->node, &victims);
		} else {
			cmd->state = USRBD_CMD_QUEUED;
			list_add(&cmd->node, &q->fifo);
			WRITE_ONCE(q->nr_queued, q->nr_queued + 1);
			queued = true;
		}
	}
	spin_unlock_irq(&q->lock);
	usrbd_fail_list(q, &victims, BLK_STS_IOERR);
	/* Another thread of the server may sleep in SERVE meanwhile. */
	if (queued)
		wake_up(&q->wait);
}

/*
 * Apply one answer. Returns 0, -EINVAL (refused), or -EAGAIN when the READ
 * data could not be copied without a fault: the request is HELD again and
 * *fault names the buffer to fault in before trying again.
 */
static int usrbd_complete_try(struct usrbd_server *srv,
			      const struct usrbd_completion *c,
			      void __user **fault)
{
	struct usrbd_queue *q = srv->q;
	struct usrbd_cmd *cmd = NULL;
	blk_status_t status = BLK_STS_OK;
	const char *why = NULL;
	struct request *rq;
	void __user *buf;

	spin_lock_irq(&q->lock);
	if (q->server != srv) {
		spin_unlock_irq(&q->lock);
		return -ENOTCONN;
	}
	rq = q->held[c->tag];
	if (rq)
		cmd = blk_mq_rq_to_pdu(rq);
	if (!cmd || cmd->state != USRBD_CMD_HELD)
		why = "tag not in flight";
	else if (c->cookie != cmd->cookie)
		why = "stale cookie (an earlier fetch of this tag)";
	else if (c->op != cmd->op)
		why = "op does not match the request";
	else if (!c->result && c->len != cmd->len)
		why = "len does not match the request";
	if (why) {
		spin_unlock_irq(&q->lock);
		return usrbd_reject(q, c, why);
	}
	/* Out of the table: a second answer for this tag is now refused. */
	q->held[c->tag] = NULL;
	cmd->state = USRBD_CMD_COMPLETING;
	spin_unlock_irq(&q->lock);

	if (c->result) {
		status = usrbd_result_status(c->result);
	} else if (cmd->op == USRBD_OP_READ) {
		buf = usrbd_server_buf(srv, rq, cmd);
		if (!usrbd_copy_data(rq, buf, false)) {
			/* The server keeps the request while its buffer faults in. */
			spin_lock_irq(&q->lock);
			if (!q->dead && q->server == srv) {
				cmd->state = USRBD_CMD_HELD;
				q->held[c->tag] = rq;
				spin_unlock_irq(&q->lock);
				*fault = buf;
				return -EAGAIN;
			}
			spin_unlock_irq(&q->lock);
			/* Dead: fail it; unbound meanwhile: for the next server. */
			usrbd_requeue(q, &rq, 1);
			return READ_ONCE(q->dead) ? 0 : -ENOTCONN;
		}
	}
	usrbd_end_request(q, rq, status);
	return 0;
}

static int usrbd_complete_one(struct usrbd_server *srv,
			      const struct usrbd_completion *c)
{
	struct usrbd_queue *q = srv->q;
	void __user *fault = NULL;
	unsigned int attempt;
	int ret;

	if (c->tag >= q->dev->queue_depth)
		return usrbd_reject(q, c, "tag out of range");
	if (c->result > 0 || c->result < -MAX_ERRNO)
		return usrbd_reject(q, c, "result is neither 0 nor -errno");

	for (attempt = 0; ; attempt++) {
		ret = usrbd_complete_try(srv, c, &fault);
		if (ret != -EAGAIN)
			return ret;
		/* A bad buffer, or one that keeps losing its pages. */
		if (attempt == USRBD_FAULT_RETRIES || fault_in_readable(fault, c->len))
			return -EFAULT;
	}
}

static noinline_for_stack int
usrbd_apply_completions(struct usrbd_server *srv,
			const struct usrbd_completion __user *ucomp,
			u32 count, u32 *done)
{
	struct usrbd_completion batch[USRBD_SERVE_CHUNK];

	while (*done < count) {
		u32 n = min_t(u32, count - *done, USRBD_SERVE_CHUNK);
		u32 i;
		int ret;

		if (copy_from_user(batch, ucomp + *done, n * sizeof(batch[0])))
			return -EFAULT;
		for (i = 0; i < n; i++) {
			ret = usrbd_complete_one(srv, &batch[i]);
			if (ret)
				return ret;
			(*done)++;
		}
	}
	return 0;
}

/*
 * The server has the requests now, unless the queue died meanwhile (they
 * fail) or the server was unbound (-ENOTCONN: they are queued again).
 */
static int usrbd_hand_over(struct usrbd_server *srv, struct request **rqs,
			   unsigned int n, u32 *events)
{
	struct usrbd_queue *q = srv->q;
	LIST_HEAD(victims);
	unsigned int i;

	spin_lock_irq(&q->lock);
	if (!q->dead && q->server != srv) {
		spin_unlock_irq(&q->lock);
		usrbd_requeue(q, rqs, n);
		return -ENOTCONN;
	}
	for (i = 0; i < n; i++) {
		struct usrbd_cmd *cmd = blk_mq_rq_to_pdu(rqs[i]);

		if (q->dead) {
			q->held[cmd->tag] = NULL;
			cmd->state = USRBD_CMD_IDLE;
			list_add_tail(&cmd->node, &victims);
		} else {
			cmd->state = USRBD_CMD_HELD;
		}
	}
	if (q->dead)
		*events |= USRBD_EV_GONE;
	spin_unlock_irq(&q->lock);
	usrbd_fail_list(q, &victims, BLK_STS_IOERR);
	return 0;
}

/* copy_to_user() that fails rather than fault: see the comment at the top. */
static unsigned long usrbd_copy_to_user_nofault(void __user *to, const void *from,
						unsigned long n)
{
	unsigned long left;

	pagefault_disable();
	left = copy_to_user(to, from, n);
	pagefault_enable();
	return left;
}

/*
 * Fetch up to @max (<= USRBD_SERVE_CHUNK) requests; returns how many,
 * -ENOTCONN if the server was unbound, or -EAGAIN when a copy would have
 * faulted: the requests are queued again and *fault, *fault_len name the
 * user memory to fault in before retrying.
 */
static noinline_for_stack int
usrbd_fetch_chunk(struct usrbd_server *srv, struct usrbd_request __user *ureq,
		  u32 max, u32 *events, void __user **fault, size_t *fault_len)
{
	struct usrbd_request out[USRBD_SERVE_CHUNK];
	struct request *rqs[USRBD_SERVE_CHUNK];
	struct usrbd_queue *q = srv->q;
	unsigned int n = 0, i;
	int ret;

	spin_lock_irq(&q->lock);
	if (q->dead) {
		spin_unlock_irq(&q->lock);
		*events |= USRBD_EV_GONE;
		return 0;
	}
	if (q->server != srv) {
		spin_unlock_irq(&q->lock);
		return -ENOTCONN;
	}
	while (n < max && !list_empty(&q->fifo)) {
		struct usrbd_cmd *cmd = list_first_entry(&q->fifo,
							 struct usrbd_cmd, node);
		struct request *rq = blk_mq_rq_from_pdu(cmd);

		list_del_init(&cmd->node);
		WRITE_ONCE(q->nr_queued, q->nr_queued - 1);
		cmd->state = USRBD_CMD_FETCHING;
		cmd->tag = rq->tag;
		cmd->cookie = ++q->next_cookie;
		q->held[cmd->tag] = rq;
		rqs[n++] = rq;
	}
	spin_unlock_irq(&q->lock);

	for (i = 0; i < n; i++) {
		struct usrbd_cmd *cmd = blk_mq_rq_to_pdu(rqs[i]);
		void __user *buf = usrbd_server_buf(srv, rqs[i], cmd);

		out[i] = (struct usrbd_request) {
			.tag	= cmd->tag,
			.op	= cmd->op,
			.flags	= cmd->flags,
			.len	= cmd->len,
			.offset	= usrbd_rq_offset(rqs[i], cmd),
			.cookie	= cmd->cookie,
		};
		if (cmd->op == USRBD_OP_WRITE &&
		    !usrbd_copy_data(rqs[i], buf, true)) {
			*fault = buf;
			*fault_len = cmd->len;
			goto fault;
		}
	}
	if (n && usrbd_copy_to_user_nofault(ureq, out, n * sizeof(out[0]))) {
		*fault = ureq;
		*fault_len = n * sizeof(out[0]);
		goto fault;
	}
	ret = usrbd_hand_over(srv, rqs, n, events);
	return ret ? ret : n;

fault:
	usrbd_requeue(q, rqs, n);
	return -EAGAIN;
}

static bool usrbd_queue_ready(struct usrbd_server *srv)
{
	struct usrbd_queue *q = srv->q;

	return READ_ONCE(q->nr_queued) || READ_ONCE(q->dead) ||
	       READ_ONCE(q->server) != srv;
}

static void usrbd_wait_for_work(struct usrbd_server *srv, u32 wait_ms)
{
	unsigned int spin_us = READ_ONCE(usrbd_poll_spin_us);
	struct usrbd_queue *q = srv->q;

	if (spin_us) {
		/* A short busy-poll saves the sleep/wake round trip at low depth. */
		u64 end = ktime_get_ns() + (u64)min(spin_us, wait_ms) * NSEC_PER_USEC;

		while (!usrbd_queue_ready(srv)) {
			if (need_resched() || signal_pending(current) ||
			    ktime_get_ns() > end)
				break;
			cpu_relax();
		}
	}
	if (usrbd_queue_ready(srv))
		return;
	/* A signal just ends the wait: SERVE then returns no request. */
	if (wait_ms == USRBD_WAIT_FOREVER)
		wait_event_interruptible(q->wait, usrbd_queue_ready(srv));
	else
		wait_event_interruptible_timeout(q->wait, usrbd_queue_ready(srv),
						 msecs_to_jiffies(wait_ms));
}

static int usrbd_fetch(struct usrbd_server *srv, struct usrbd_request __user *ureq,
		       u32 max, u32 wait_ms, u32 *nr, u32 *events)
{
	void __user *last_fault = NULL;
	unsigned int faults = 0;
	bool waited = false;

	for (;;) {
		while (*nr < max) {
			u32 want = min_t(u32, max - *nr, USRBD_SERVE_CHUNK);
			void __user *fault = NULL;
			size_t fault_len = 0;
			int got = usrbd_fetch_chunk(srv, ureq + *nr, want, events,
						    &fault, &fault_len);

			if (got == -ENOTCONN)
				return got;
			if (got == -EAGAIN) {
				/*
				 * A fork write-protects the whole buffer, so each
				 * request of a chunk may fault once: only the same
				 * buffer faulting again (reclaim) uses up the retries.
				 */
				if (fault != last_fault)
					faults = 0;
				last_fault = fault;
				/* Without writing: the buffer may be a linear device. */
				if (faults++ < USRBD_FAULT_RETRIES &&
				    !fault_in_safe_writeable(fault, fault_len))
					continue;
				pr_warn_ratelimited("%s: queue %u: serve: server buffer at %#lx cannot be faulted in (%u tries)\n",
						    srv->dev->name, srv->q->index,
						    (unsigned long)fault, faults);
				/* Requests already handed over must be reported. */
				return *nr ? 0 : -EFAULT;
			}
			*nr += got;
			if (got < want)
				break;
		}
		if (*nr || *events || !wait_ms || waited)
			return 0;
		usrbd_wait_for_work(srv, wait_ms);
		waited = true;
	}
}

static long usrbd_serve(struct usrbd_server *srv, struct usrbd_serve __user *uarg)
{
	struct usrbd_queue *q = srv->q;
	struct usrbd_serve s;
	int ret = 0;

	if (current->mm != srv->mm)
		return -EPERM;
	if (copy_from_user(&s, uarg, sizeof(s)))
		return -EFAULT;
	if (s.nr_completions > USRBD_MAX_BATCH || s.max_requests > USRBD_MAX_BATCH) {
		pr_warn_ratelimited("%s: serve: batch larger than %u\n",
				    q->dev->name, USRBD_MAX_BATCH);
		return -EINVAL;
	}
	s.nr_completed = 0;
	s.nr_requests = 0;
	s.events = 0;

	if (READ_ONCE(q->dead)) {
		s.events |= USRBD_EV_GONE;
	} else if (READ_ONCE(q->server) != srv) {
		ret = -ENOTCONN;
	} else {
		ret = usrbd_apply_completions(srv, u64_to_user_ptr(s.completions),
					      s.nr_completions, &s.nr_completed);
		if (!ret && s.max_requests)
			ret = usrbd_fetch(srv, u64_to_user_ptr(s.requests),
					  s.max_requests, s.wait_ms,
					  &s.nr_requests, &s.events);
	}
	/* Requests fetched before an unbind were queued again. */
	if (ret == -ENOTCONN)
		s.nr_requests = 0;
	if (copy_to_user(uarg, &s, sizeof(s)))
		return -EFAULT;
	return ret;
}

static long usrbd_server_ioctl(struct file *file, unsigned int cmd,
			       unsigned long arg)
{
	if (cmd != USRBD_IOC_SERVE)
		return -ENOTTY;
	return usrbd_serve(file->private_data, (void __user *)arg);
}

static int usrbd_server_release(struct inode *inode, struct file *file)
{
	struct usrbd_server *srv = file->private_data;
	struct usrbd_dev *dev = srv->dev;

	usrbd_queue_detach(srv->q, srv);
	mmdrop(srv->mm);
	kfree(srv);
	usrbd_dev_put(dev);
	return 0;
}

static const struct file_operations usrbd_server_fops = {
	.owner		= THIS_MODULE,
	.release	= usrbd_server_release,
	.unlocked_ioctl	= usrbd_server_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.llseek		= noop_llseek,
};

/*
 * The process that attached @srv is gone, though its fd lives on (a child
 * forked without exec inherited it): nobody can call SERVE on it any more
 * (SERVE runs only in the attaching address space).
 */
static bool usrbd_server_orphaned(struct usrbd_server *srv)
{
	return !atomic_read(&srv->mm->mm_users);
}

/* Returns the new server fd, or a negative errno. */
int usrbd_server_attach(struct usrbd_dev *dev, const struct usrbd_attach *a)
{
	bool linear = a->flags & USRBD_ATTACH_LINEAR;
	/* Every request lies inside the device: the size bounds a linear buffer. */
	u64 need = linear ? dev->size : (u64)dev->queue_depth * dev->max_io_bytes;
	struct usrbd_server *srv;
	struct usrbd_queue *q;
	bool orphan = false;
	int ret = 0;
	int fd;

	if (a->queue >= dev->nr_queues) {
		pr_warn_ratelimited("%s: attach: queue %u, device has %u\n",
				    dev->name, a->queue, dev->nr_queues);
		return -EINVAL;
	}
	if (a->buf_len < need) {
		pr_warn_ratelimited("%s: attach: buffer of %llu bytes, need %llu\n",
				    dev->name, (unsigned long long)a->buf_len,
				    (unsigned long long)need);
		return -EINVAL;
	}
	/* On a 32-bit kernel a u64 address or end may not fit a pointer. */
	if (a->buf_addr > ULONG_MAX || need > ULONG_MAX - a->buf_addr) {
		pr_warn_ratelimited("%s: attach: buffer end beyond the address space\n",
				    dev->name);
		return -EINVAL;
	}
	if (!a->buf_addr || !access_ok(u64_to_user_ptr(a->buf_addr), need))
		return -EFAULT;

	srv = kzalloc(sizeof(*srv), GFP_KERNEL);
	if (!srv)
		return -ENOMEM;
	q = &dev->queues[a->queue];
	srv->dev = dev;
	srv->q = q;
	srv->buf_addr = a->buf_addr;
	srv->linear = linear;
	mmgrab(current->mm);
	srv->mm = current->mm;
	/* Counted before a timeout can unbind it (which uncounts it). */
	usrbd_dev_server_change(dev, 1);

	spin_lock_irq(&q->lock);
	if (q->dead) {
		ret = -ENODEV;
	} else if (q->server && !usrbd_server_orphaned(q->server)) {
		ret = -EBUSY;
	} else {
		/* An orphan's requests go to the new server. */
		orphan = usrbd_queue_unbind(q, q->server);
		WRITE_ONCE(q->server, srv);
	}
	spin_unlock_irq(&q->lock);
	if (ret) {
		usrbd_dev_server_change(dev, -1);
		mmdrop(srv->mm);
		kfree(srv);
		return ret;
	}
	if (orphan) {
		pr_info_ratelimited("%s: queue %u: the previous server's process is gone: replaced\n",
				    dev->name, q->index);
		usrbd_dev_server_change(dev, -1);
	}
	kref_get(&dev->ref);

	fd = anon_inode_getfd("[usrbd-server]", &usrbd_server_fops, srv,
			      O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		usrbd_queue_detach(q, srv);
		mmdrop(srv->mm);
		kfree(srv);
		usrbd_dev_put(dev);
	}
	return fd;
}
