// SPDX-License-Identifier: GPL-2.0
/*
 * usrbd: the blk-mq side of the request path.
 *
 * queue_rq() puts a request on its hardware queue's FIFO and wakes the
 * queue's server; SERVE (server.c) takes it from there. The timeout
 * handler and destroy fail requests from here. Whoever moves a request to
 * USRBD_CMD_IDLE under the queue lock is the one that ends it, so a
 * request is ended exactly once whatever races.
 *
 * A request the server holds is never ended under its feet (its tag, and
 * the buffer slot of that tag, would be reused while the server may still
 * answer or fill it). When such a request times out, the server is unbound
 * instead: it ends that request, and everything else it held is queued
 * again for the next server, as on server death.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/blk-mq.h>
#include <linux/blkdev.h>
#include <linux/list.h>
#include <linux/spinlock.h>
#include <linux/wait.h>

#include "usrbd.h"

/* Byte offset for userspace; a FLUSH has no position (0). */
u64 usrbd_rq_offset(struct request *rq, const struct usrbd_cmd *cmd)
{
	if (cmd->op == USRBD_OP_FLUSH)
		return 0;
	return (u64)blk_rq_pos(rq) << SECTOR_SHIFT;
}

static bool usrbd_op_from_rq(struct usrbd_dev *dev, struct request *rq,
			     struct usrbd_cmd *cmd)
{
	bool ro = dev->flags & USRBD_F_READ_ONLY;

	cmd->flags = 0;
	cmd->len = blk_rq_bytes(rq);
	switch (req_op(rq)) {
	case REQ_OP_READ:
		cmd->op = USRBD_OP_READ;
		return true;
	case REQ_OP_WRITE:
		cmd->op = USRBD_OP_WRITE;
		if (rq->cmd_flags & REQ_FUA)
			cmd->flags |= USRBD_REQ_FUA;
		return !ro;
	case REQ_OP_FLUSH:
		cmd->op = USRBD_OP_FLUSH;
		cmd->len = 0;
		return true;
	case REQ_OP_DISCARD:
		cmd->op = USRBD_OP_DISCARD;
		return !ro && (dev->flags & USRBD_F_DISCARD);
	case REQ_OP_WRITE_ZEROES:
		cmd->op = USRBD_OP_WRITE_ZEROES;
		if (rq->cmd_flags & REQ_NOUNMAP)
			cmd->flags |= USRBD_REQ_NOUNMAP;
		return !ro && (dev->flags & USRBD_F_WRITE_ZEROES);
	default:
		return false;
	}
}

static blk_status_t usrbd_queue_rq(struct blk_mq_hw_ctx *hctx,
				   const struct blk_mq_queue_data *bd)
{
	struct usrbd_queue *q = hctx->driver_data;
	struct usrbd_dev *dev = q->dev;
	struct request *rq = bd->rq;
	struct usrbd_cmd *cmd = blk_mq_rq_to_pdu(rq);
	unsigned long flags;

	cmd->state = USRBD_CMD_IDLE;
	if (!usrbd_op_from_rq(dev, rq, cmd)) {
		pr_warn_ratelimited("%s: op %u refused\n", dev->name, req_op(rq));
		return BLK_STS_NOTSUPP;
	}
	atomic64_inc(&q->stats.ops[cmd->op].submitted);
	if (unlikely(cmd->len > dev->max_io_bytes)) {
		pr_warn_ratelimited("%s: request of %u bytes exceeds max_io_bytes\n",
				    dev->name, cmd->len);
		atomic64_inc(&q->stats.ops[cmd->op].errors);
		return BLK_STS_IOERR;
	}

	blk_mq_start_request(rq);

	spin_lock_irqsave(&q->lock, flags);
	if (unlikely(q->dead)) {
		spin_unlock_irqrestore(&q->lock, flags);
		atomic64_inc(&q->stats.ops[cmd->op].errors);
		return BLK_STS_IOERR;
	}
	atomic_inc(&q->nr_active);
	cmd->state = USRBD_CMD_QUEUED;
	list_add_tail(&cmd->node, &q->fifo);
	WRITE_ONCE(q->nr_queued, q->nr_queued + 1);
	spin_unlock_irqrestore(&q->lock, flags);

	/* Pairs with the barrier in prepare_to_wait() of a sleeping server. */
	if (wq_has_sleeper(&q->wait))
		wake_up(&q->wait);
	return BLK_STS_OK;
}

/* End a request that the caller moved to USRBD_CMD_IDLE. */
void usrbd_end_request(struct usrbd_queue *q, struct request *rq,
		       blk_status_t status)
{
	struct usrbd_cmd *cmd = blk_mq_rq_to_pdu(rq);
	struct usrbd_op_counters *c = &q->stats.ops[cmd->op];

	if (status == BLK_STS_OK) {
		atomic64_inc(&c->completed);
		atomic64_add(cmd->len, &c->bytes);
	} else {
		atomic64_inc(&c->errors);
	}
	blk_mq_end_request(rq, status);

	/* Pairs with the barrier in prepare_to_wait() of a draining destroy. */
	if (atomic_dec_and_test(&q->nr_active) &&
	    wq_has_sleeper(&q->dev->drain_wait))
		wake_up(&q->dev->drain_wait);
}

static enum blk_eh_timer_return usrbd_timeout(struct request *rq)
{
	struct usrbd_queue *q = rq->mq_hctx->driver_data;
	struct usrbd_cmd *cmd = blk_mq_rq_to_pdu(rq);
	bool unbound = false;

	spin_lock_irq(&q->lock);
	switch (cmd->state) {
	case USRBD_CMD_QUEUED:
		list_del(&cmd->node);
		WRITE_ONCE(q->nr_queued, q->nr_queued - 1);
		break;
	case USRBD_CMD_HELD:
		/* Only the queue's server holds requests: see the top. */
		q->held[cmd->tag] = NULL;
		unbound = usrbd_queue_unbind(q, q->server);
		break;
	default:
		/*
		 * A SERVE call is copying its data (it cannot be failed under
		 * its feet) or someone else is ending it: look again later.
		 */
		spin_unlock_irq(&q->lock);
		return BLK_EH_RESET_TIMER;
	}
	cmd->state = USRBD_CMD_IDLE;
	spin_unlock_irq(&q->lock);

	if (unbound) {
		pr_warn_ratelimited("%s: queue %u: a held request timed out: server unbound\n",
				    q->dev->name, q->index);
		usrbd_dev_server_change(q->dev, -1);
		/* The unbound server may sleep in SERVE: it gets ENOTCONN. */
		wake_up_all(&q->wait);
	}
	atomic64_inc(&q->stats.timeouts);
	pr_warn_ratelimited("%s: queue %u: request timed out (op %u, %u bytes at %llu)\n",
			    q->dev->name, q->index, cmd->op, cmd->len,
			    usrbd_rq_offset(rq, cmd));
	usrbd_end_request(q, rq, BLK_STS_TIMEOUT);
	return BLK_EH_DONE;
}

static int usrbd_init_hctx(struct blk_mq_hw_ctx *hctx, void *data,
			   unsigned int index)
{
	struct usrbd_dev *dev = data;

	hctx->driver_data = &dev->queues[index];
	return 0;
}

const struct blk_mq_ops usrbd_mq_ops = {
	.queue_rq	= usrbd_queue_rq,
	.timeout	= usrbd_timeout,
	.init_hctx	= usrbd_init_hctx,
};

/*
 * Move the QUEUED requests (if @queued) and the HELD ones (if @held) to
 * IDLE, onto @out. Caller holds q->lock.
 */
static void usrbd_queue_take(struct usrbd_queue *q, bool queued, bool held,
			     struct list_head *out)
{
	struct usrbd_cmd *cmd, *next;
	unsigned int tag;

	lockdep_assert_held(&q->lock);
	if (queued) {
		list_for_each_entry_safe(cmd, next, &q->fifo, node) {
			cmd->state = USRBD_CMD_IDLE;
			list_move_tail(&cmd->node, out);
		}
		WRITE_ONCE(q->nr_queued, 0);
	}
	if (!held)
		return;
	for (tag = 0; tag < q->dev->queue_depth; tag++) {
		struct request *rq = q->held[tag];

		if (!rq)
			continue;
		cmd = blk_mq_rq_to_pdu(rq);
		/* FETCHING ones belong to a running SERVE, which checks dead. */
		if (cmd->state != USRBD_CMD_HELD)
			continue;
		q->held[tag] = NULL;
		cmd->state = USRBD_CMD_IDLE;
		list_add_tail(&cmd->node, out);
	}
}

/* End every request on @list, all IDLE and linked through their node. */
void usrbd_fail_list(struct usrbd_queue *q, struct list_head *list,
		     blk_status_t status)
{
	struct usrbd_cmd *cmd, *next;

	list_for_each_entry_safe(cmd, next, list, node) {
		list_del_init(&cmd->node);
		usrbd_end_request(q, blk_mq_rq_from_pdu(cmd), status);
	}
}

/*
 * The device is going away: refuse new requests, fail every queued and
 * held one, and tell the servers (USRBD_EV_GONE).
 */
void usrbd_queue_kill(struct usrbd_queue *q)
{
	LIST_HEAD(victims);

	spin_lock_irq(&q->lock);
	WRITE_ONCE(q->dead, true);
	usrbd_queue_take(q, true, true, &victims);
	spin_unlock_irq(&q->lock);

	usrbd_fail_list(q, &victims, BLK_STS_IOERR);
	wake_up_all(&q->wait);
}

/*
 * @srv stops being @q's server, if it still is: the requests it held go
 * back to the head of the FIFO, in tag order, for the next server (their
 * timers keep running). Its FETCHING ones belong to a running SERVE,
 * which queues them again itself. Caller holds q->lock. Returns whether
 * @srv was the server.
 */
bool usrbd_queue_unbind(struct usrbd_queue *q, struct usrbd_server *srv)
{
	LIST_HEAD(back);
	struct usrbd_cmd *cmd;

	lockdep_assert_held(&q->lock);
	if (!srv || q->server != srv)
		return false;
	WRITE_ONCE(q->server, NULL);
	usrbd_queue_take(q, false, true, &back);
	list_for_each_entry(cmd, &back, node) {
		cmd->state = USRBD_CMD_QUEUED;
		WRITE_ONCE(q->nr_queued, q->nr_queued + 1);
	}
	list_splice(&back, &q->fifo);
	return true;
}

/*
 * The server fd @srv is closed (exit, crash): the requests it held wait
 * for the next server, as queued ones do, or for their timeout.
 */
void usrbd_queue_detach(struct usrbd_queue *q, struct usrbd_server *srv)
{
	bool was_server;

	spin_lock_irq(&q->lock);
	was_server = usrbd_queue_unbind(q, srv);
	spin_unlock_irq(&q->lock);
	if (was_server)
		usrbd_dev_server_change(q->dev, -1);
}

unsigned int usrbd_queue_active(struct usrbd_queue *q)
{
	return atomic_read(&q->nr_active);
}
