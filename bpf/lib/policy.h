/* SPDX-License-Identifier: GPL-2.0 */
/* Policy map layout and endpoint policy flags (lookup in lookup.h). The key is exact-match on
 * {endpoint, peer identity, direction, L4 protocol, destination port}; wildcards are the zero value
 * for peer (any identity), proto (any protocol) and dport (any port). For a new flow the program
 * probes, in order: (peer, proto, dport) (peer, proto, 0) (peer, 0, 0) (0, proto, dport) (0, proto, 0)
 * (0, 0, 0) and takes the first hit. Userspace (shared/src/policy/compile.ts) closes the table over
 * that order so that deny wins wherever a deny rule matches; the program just follows it. */
#pragma once

#include "common.h"

#define POLICY_DIR_INGRESS 0 /* traffic towards the endpoint */
#define POLICY_DIR_EGRESS 1  /* traffic sent by the endpoint */

/* ICMP/ICMPv6 type T is matched as dport 0x100 | T (so "any type" 0 differs from type 0). */
#define POLICY_ICMP_TYPE_FLAG 0x100

struct policy_key {
	__u32 endpoint_id;
	__u32 peer_identity; /* 0 = any */
	__u8 direction;
	__u8 proto;  /* IPPROTO_*, 0 = any */
	__be16 dport; /* network order, 0 = any */
};
_Static_assert(sizeof(struct policy_key) == 12, "policy_key layout is shared with userspace");

#define POLICY_ACTION_ALLOW 0
#define POLICY_ACTION_DENY 1

struct policy_entry {
	__u8 action;
	__u8 pad;
	__be16 proxy_port; /* allow through the L7 proxy listening on this port (proxy.h); 0 = plain */
	__u32 rule_id;  /* lets flow events name the rule that matched */
	__u64 packets;  /* new flows that hit this entry; atomic adds: the map is shared by all CPUs */
	__u64 bytes;
};
_Static_assert(sizeof(struct policy_entry) == 24, "policy_entry layout is shared with userspace");

/* endpoint_config.flags bits owned by policy (shared/src/policy/map-codec.ts EP_FLAGS). */
#define EP_F_INGRESS_LOOKUP (1U << 0)       /* look new ingress flows up in the policy map */
#define EP_F_EGRESS_LOOKUP (1U << 1)
#define EP_F_INGRESS_DEFAULT_DENY (1U << 2) /* and drop when nothing matches */
#define EP_F_EGRESS_DEFAULT_DENY (1U << 3)
#define EP_F_AUDIT (1U << 4)                /* report would-be drops, let them pass */
#define EP_F_POLICY_MASK 0x1f
