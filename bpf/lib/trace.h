/* SPDX-License-Identifier: GPL-2.0 */
/* Flow/drop event record written to the `events` ring buffer (producer in events.h, consumer in
 * shared/src/flows). Lesson from the measurements: a wakeup per new flow costs ~2 us CPU, so the
 * reader drains on a timer while busy and watches the fd only while asleep (adaptive wake-up, events.h). */
#pragma once

#include "common.h"

enum trace_event_type {
	TRACE_FLOW_NEW = 1, /* conntrack created an entry */
	TRACE_DROP = 2,
	TRACE_FLOW_END = 3, /* FIN/RST, with the flow's totals */
	TRACE_DNS_CACHED = 4, /* a DNS query answered by dns_cache.h; rule_id = the entry's id */
};

#define TRACE_VERDICT_FORWARDED 0
#define TRACE_VERDICT_DROPPED 1
#define TRACE_VERDICT_REDIRECTED 2
#define TRACE_VERDICT_AUDIT 3

#define TRACE_F_AUDIT (1 << 0)
#define TRACE_F_PROXY (1 << 1) /* the flow goes through the L7 proxy */

/* 96 bytes, host byte order except the ports (network order, as in the packet). */
struct trace_event {
	__u64 ts_ns;
	__u16 type;   /* enum trace_event_type */
	__u16 reason; /* enum drop_reason for TRACE_DROP */
	__u32 ifindex;
	__u32 endpoint_id; /* the endpoint whose policy/hook saw it */
	__u32 src_identity;
	__u32 dst_identity;
	__u8 family;
	__u8 proto;
	__u8 verdict;
	__u8 direction; /* POLICY_DIR_* from the endpoint's point of view */
	__be16 sport;
	__be16 dport;
	__u32 len;
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 rule_id; /* policy rule that decided (0 = none/default deny/allow-all) */
	__u8 tcp_flags;
	__u8 flags; /* TRACE_F_* */
	__u16 pad;
	__u64 packets; /* FLOW_END: totals of the flow */
	__u64 bytes;
};
_Static_assert(sizeof(struct trace_event) == 96, "trace_event layout is shared with userspace");
