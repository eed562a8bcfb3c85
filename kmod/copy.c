// SPDX-License-Identifier: GPL-2.0
/*
 * usrbd: moving request data between the bio pages and server memory.
 *
 * The server's pages are pinned with pin_user_pages_fast() and FOLL_NOFAULT
 * a window at a time (a pin, unlike a plain reference, keeps fork's
 * copy-on-write from giving the server another page under the copy) and
 * copied with memcpy() through kmap_local_page(), the way brd copies: one
 * page walk per page, the page pinned for the whole copy. Only
 * anonymous pages are written that way (they may be dirtied without the
 * page lock, which could sleep). Any other page, or one that cannot be
 * taken without a fault (not present yet, the shared zero page of a hole),
 * is copied with a user access under pagefault_disable(). Neither ever takes a page fault:
 * the caller holds the request FETCHING or COMPLETING, which nothing else
 * may end, so a copy must not wait for as long as a fault could. When a
 * page is truly missing the copy fails and the caller faults it in with no
 * request at stake (see server.c).
 */
#include <linux/blk-mq.h>
#include <linux/highmem.h>
#include <linux/mm.h>
#include <linux/uaccess.h>

#include "usrbd.h"

/* Server pages pinned per window: bounds the stack and the pages pinned. */
#define USRBD_COPY_WINDOW	16

struct usrbd_user_pages {
	unsigned long start;	/* user address of pages[0], page aligned */
	int nr;			/* pages pinned from start */
	bool write;		/* the copy writes them: dirty on release */
	struct page *pages[USRBD_COPY_WINDOW];
};

/* Writable through kmap: see the comment at the top. */
static bool usrbd_user_page_ok(struct usrbd_user_pages *up, struct page *page)
{
	return !up->write || PageAnon(page);
}

static void usrbd_user_pages_release(struct usrbd_user_pages *up)
{
	int i;

	for (i = 0; i < up->nr; i++) {
		/* Reclaim must not drop a written page as clean (swap cache). */
		if (up->write && PageAnon(up->pages[i]))
			set_page_dirty(up->pages[i]);
		unpin_user_page(up->pages[i]);
	}
	up->nr = 0;
}

/*
 * The pinned server page containing @addr, pinning a new window of pages up
 * to @end if needed; NULL when it cannot be pinned without a fault.
 */
static struct page *usrbd_user_page(struct usrbd_user_pages *up,
				    unsigned long addr, unsigned long end)
{
	unsigned long page = addr & PAGE_MASK;
	int want, got;

	if (up->nr && page >= up->start &&
	    page - up->start < ((unsigned long)up->nr << PAGE_SHIFT))
		return up->pages[(page - up->start) >> PAGE_SHIFT];

	usrbd_user_pages_release(up);
	want = min_t(unsigned long, USRBD_COPY_WINDOW,
		     DIV_ROUND_UP(end - page, PAGE_SIZE));
	got = pin_user_pages_fast(page, want,
				  (up->write ? FOLL_WRITE : 0) | FOLL_NOFAULT,
				  up->pages);
	if (got <= 0)
		return NULL;
	up->start = page;
	up->nr = got;
	return up->pages[0];
}

/* Copy @len bytes between @kaddr and the server at @uaddr, inside one page. */
static bool usrbd_copy_piece(struct usrbd_user_pages *up, void *kaddr,
			     unsigned long uaddr, unsigned long end,
			     unsigned int len)
{
	struct page *page = usrbd_user_page(up, uaddr, end);
	unsigned long left;
	void *mapped;

	if (page && usrbd_user_page_ok(up, page)) {
		mapped = kmap_local_page(page);
		if (up->write) {
			memcpy(mapped + offset_in_page(uaddr), kaddr, len);
			flush_dcache_page(page);
		} else {
			memcpy(kaddr, mapped + offset_in_page(uaddr), len);
		}
		kunmap_local(mapped);
		return true;
	}

	pagefault_disable();
	if (up->write)
		left = copy_to_user((void __user *)uaddr, kaddr, len);
	else
		left = copy_from_user(kaddr, (const void __user *)uaddr, len);
	pagefault_enable();
	return !left;
}

/*
 * Copy the payload of @rq between its bio pages and the server buffer at
 * @ubuf (to the server for a WRITE being fetched, from it for a READ being
 * answered). Returns false, having copied part of it or nothing, when a
 * server page is missing: the caller faults it in and calls again.
 */
bool usrbd_copy_data(struct request *rq, void __user *ubuf, bool to_server)
{
	unsigned long uaddr = (unsigned long)ubuf;
	unsigned long end = uaddr + blk_rq_bytes(rq);
	struct usrbd_user_pages up = { .write = to_server };
	struct req_iterator iter;
	struct bio_vec bv;
	bool ok = true;

	rq_for_each_segment(bv, rq, iter) {
		void *kaddr = bvec_kmap_local(&bv);
		unsigned int done = 0;

		while (ok && done < bv.bv_len) {
			unsigned int len = min_t(unsigned long, bv.bv_len - done,
						 PAGE_SIZE - offset_in_page(uaddr));

			ok = usrbd_copy_piece(&up, kaddr + done, uaddr, end, len);
			done += len;
			uaddr += len;
		}
		if (!to_server)
			flush_dcache_page(bv.bv_page);
		kunmap_local(kaddr);
		if (!ok)
			break;
	}
	usrbd_user_pages_release(&up);
	return ok;
}
