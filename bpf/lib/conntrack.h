/* SPDX-License-Identifier: GPL-2.0 */
/* Conntrack layout (tracking comes in a later issue). One entry per direction-normalised tuple,
 * stored in an LRU hash so a full table evicts the oldest flows instead of failing inserts.
 * Lesson from the measurements: a SYN on an entry that is not a live connection (closed, or a new
 * ISN) must start a new flow, hence tcp_isn and state live in the entry. */
#pragma once

#include "common.h"

#define CT_DIR_FORWARD 0
#define CT_DIR_REPLY 1

enum ct_state {
	CT_STATE_NEW = 0,
	CT_STATE_ESTABLISHED = 1,
	CT_STATE_CLOSING = 2,
	CT_STATE_CLOSED = 3,
};

struct ct_key {
	__u8 family; /* MBR_FAMILY_IPV4 / MBR_FAMILY_IPV6 */
	__u8 proto;
	__u8 pad[2];
	__be16 sport;
	__be16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
};
_Static_assert(sizeof(struct ct_key) == 40, "ct_key layout is shared with userspace");

struct ct_entry {
	__u64 created_ns;
	__u64 last_seen_ns;
	__u64 packets[2]; /* indexed by CT_DIR_* */
	__u64 bytes[2];
	__u32 src_identity;
	__u32 dst_identity;
	__u32 tcp_isn;
	__u8 tcp_flags_seen[2];
	__u8 state; /* enum ct_state */
	__u8 flags;
};
_Static_assert(sizeof(struct ct_entry) == 64, "ct_entry layout is shared with userspace");
