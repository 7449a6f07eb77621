/* SPDX-License-Identifier: GPL-2.0 */
/* Flow and drop events into the `events` ring buffer (record in trace.h): only when enabled in
 * datapath_config, at most events_per_sec per CPU (token bucket). Submitted with adaptive wake-up
 * (flags 0): the kernel wakes a reader only for a record written into an empty ring, so an idle agent
 * sleeps in epoll until the first event, and a busy one, draining on its own timer with the fd not
 * watched, costs at most one irq_work per drain. What cannot be delivered is counted in events_lost. */
#pragma once

#include "maps.h"
#include "parse.h"

static __always_inline void count_event_lost(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&events_lost, &zero);

	if (lost)
		*lost += 1;
}

/* Token bucket in nanoseconds of credit: one event costs 1e9 / rate ns; the bucket holds `burst`. */
static __always_inline bool event_rate_ok(const struct datapath_config *cfg, __u64 now)
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
	if (credit < interval) {
		b->credit_ns = credit;
		return false;
	}
	b->credit_ns = credit - interval;
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

static __always_inline void emit_event(const struct pkt *p, const struct event_meta *m, const struct endpoint_config *ep,
				       const struct ct_entry *ct)
{
	const struct datapath_config *cfg = global_config();
	struct trace_event *ev;
	__u64 now;

	if (!cfg || !(cfg->flags & CFG_F_EVENTS))
		return;
	/* One clock read per event, for the rate limit and the record's stamp: bpf_ktime_get_ns is the
	 * clocksource (pvclock in a VM), and a connection's four events read it four times instead of 8. */
	now = bpf_ktime_get_ns();
	if (!event_rate_ok(cfg, now)) {
		count_event_lost();
		return;
	}
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_event_lost();
		return;
	}
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
	bpf_ringbuf_submit(ev, 0);
}
