/* SPDX-License-Identifier: GPL-2.0 */
/* Flow and drop events into the `events` ring buffer (record in trace.h): only when enabled in
 * datapath_config, at most events_per_sec per CPU (token bucket). Submitted with adaptive wake-up
 * (flags 0): the kernel wakes a reader only for a record written into an empty ring, so an idle agent
 * sleeps in epoll until the first event, and a busy one, draining on its own timer with the fd not
 * watched, costs at most one irq_work per drain. What cannot be delivered is counted in events_lost. */
#pragma once

#include "maps.h"
#include "parse.h"

/* Measurement knob (BPF_CFLAGS=-DMBR_EV_SUBMIT_FLAGS=BPF_RB_NO_WAKEUP): a commit into an empty ring
 * queues the ring's irq_work (a self-IPI) even when no reader waits in epoll, ~0.75-1.2 us in
 * BPF_PROG_TEST_RUN on this VM against ~0.1-0.2 us for the rest of an event (scripts/bench/
 * flow-events-testrun.ts DRAIN_EACH=1: the reader keeps up, each connection's first record finds the
 * ring empty). The default build keeps adaptive wake-up, which the sleeping reader relies on. */
#ifndef MBR_EV_SUBMIT_FLAGS
#define MBR_EV_SUBMIT_FLAGS 0
#endif

static __always_inline void count_event_lost(__u64 n)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&events_lost, &zero);

	if (lost)
		*lost += n;
}

/* Token bucket in nanoseconds of credit: one event costs 1e9 / rate ns; the bucket holds `burst`.
 * n events are taken together or not at all. */
static __always_inline bool event_rate_ok(const struct datapath_config *cfg, __u64 now, __u32 n)
{
	__u32 zero = 0;
	struct event_bucket *b;
	__u64 interval, cap, credit;
	__u32 rate = cfg->events_per_sec;

	if (!rate)
		return true;
	b = bpf_map_lookup_elem(&event_bucket, &zero);
	if (!b)
		return true;
	interval = 1000000000ULL / rate;
	cap = interval * (cfg->events_burst ? cfg->events_burst : rate);
	credit = b->credit_ns + (now - b->last_ns);
	if (credit > cap)
		credit = cap;
	b->last_ns = now;
	if (credit < interval * n) {
		b->credit_ns = credit;
		return false;
	}
	b->credit_ns = credit - interval * n;
	return true;
}

struct event_meta {
	__u16 type;
	__u16 reason;
	__u8 verdict;
	__u8 direction;
	__u8 flags;
	__u8 reversed; /* the packet is the flow's reply: report the flow's own direction */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 rule_id;
	__u16 proxy_port; /* decide(): the flow goes to the L7 proxy on this port */
};

static __always_inline void fill_event(struct trace_event *ev, __u64 now, const struct pkt *p, const struct event_meta *m,
				       const struct endpoint_config *ep, const struct ct_entry *ct)
{
	ev->ts_ns = now;
	ev->type = m->type;
	ev->reason = m->reason;
	ev->ifindex = ep->ifindex;
	ev->endpoint_id = ep->endpoint_id;
	ev->src_identity = m->src_identity;
	ev->dst_identity = m->dst_identity;
	ev->family = p->family;
	ev->proto = p->proto;
	ev->verdict = m->verdict;
	ev->direction = m->direction;
	ev->len = p->len;
	if (m->reversed) {
		ev->sport = p->dport;
		ev->dport = p->sport;
		__builtin_memcpy(ev->saddr, p->daddr, 16);
		__builtin_memcpy(ev->daddr, p->saddr, 16);
	} else {
		ev->sport = p->sport;
		ev->dport = p->dport;
		__builtin_memcpy(ev->saddr, p->saddr, 16);
		__builtin_memcpy(ev->daddr, p->daddr, 16);
	}
	ev->rule_id = m->rule_id;
	ev->tcp_flags = p->tcp_flags;
	ev->flags = m->flags;
	ev->pad = 0;
	ev->packets = ct ? ct->packets[0] + ct->packets[1] : 0;
	ev->bytes = ct ? ct->bytes[0] + ct->bytes[1] : 0;
}

/* Whether events are on and `n` of them are within the rate limit; *now: the stamp for them. One clock
 * read per record, for the rate limit and the stamp: bpf_ktime_get_ns is the clocksource (pvclock in
 * a VM). */
static __always_inline bool event_admit(__u64 *now, __u32 n)
{
	const struct datapath_config *cfg = global_config();

	if (!cfg || !(cfg->flags & CFG_F_EVENTS))
		return false;
	*now = bpf_ktime_get_ns();
	if (!event_rate_ok(cfg, *now, n)) {
		count_event_lost(n);
		return false;
	}
	return true;
}

static __always_inline void emit_event(const struct pkt *p, const struct event_meta *m, const struct endpoint_config *ep,
				       const struct ct_entry *ct)
{
	struct trace_event *ev;
	__u64 now;

	if (!event_admit(&now, 1))
		return;
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_event_lost(1);
		return;
	}
	fill_event(ev, now, p, m, ep, ct);
	bpf_ringbuf_submit(ev, MBR_EV_SUBMIT_FLAGS);
}

/* Both observation points of one pod-to-pod packet (the sender's egress, the receiver's ingress) in one
 * ring record of two trace_events: one reservation, commit, clock read and rate-limit check instead of
 * two (a local connection's four events are two records). The reader takes a record as consecutive
 * trace_events (shared/src/flows/collector.ts), so each point is still its own flow. */
static __always_inline void emit_event_pair(const struct pkt *p, const struct event_meta *m1, const struct endpoint_config *ep1,
					    const struct event_meta *m2, const struct endpoint_config *ep2, const struct ct_entry *ct)
{
	struct trace_event *ev;
	__u64 now;

	if (!event_admit(&now, 2))
		return;
#ifdef MBR_EV_NORING /* measurement variant (scripts/build-bpf.sh BPF_CFLAGS): admission only */
	return;
#endif
	ev = bpf_ringbuf_reserve(&events, 2 * sizeof(*ev), 0);
	if (!ev) {
		count_event_lost(2);
		return;
	}
#ifdef MBR_EV_NOFILL /* measurement variant: the ring's reserve and commit without the record's fields */
	ev[0].ts_ns = ev[1].ts_ns = now;
#else
	fill_event(&ev[0], now, p, m1, ep1, ct);
	fill_event(&ev[1], now, p, m2, ep2, ct);
#endif
	bpf_ringbuf_submit(ev, MBR_EV_SUBMIT_FLAGS);
}
