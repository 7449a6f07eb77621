/* SPDX-License-Identifier: GPL-2.0 */
/* Policy map layout (enforcement comes in a later issue). The key is exact-match on
 * {endpoint, peer identity, direction, L4 protocol, destination port}; wildcards are expressed by
 * userspace writing the zero value for proto/dport and the program probing (exact, port-wildcard,
 * proto-wildcard) in that order. */
#pragma once

#include "common.h"

#define POLICY_DIR_INGRESS 0 /* traffic towards the endpoint */
#define POLICY_DIR_EGRESS 1  /* traffic sent by the endpoint */

struct policy_key {
	__u32 endpoint_id;
	__u32 peer_identity;
	__u8 direction;
	__u8 proto;  /* IPPROTO_*, 0 = any */
	__be16 dport; /* network order, 0 = any */
};
_Static_assert(sizeof(struct policy_key) == 12, "policy_key layout is shared with userspace");

#define POLICY_ACTION_ALLOW 0
#define POLICY_ACTION_DENY 1

struct policy_entry {
	__u8 action;
	__u8 pad[3];
	__u32 rule_id;  /* lets flow events name the rule that matched */
	__u64 packets;  /* updated with atomic adds: the map is shared by all CPUs */
	__u64 bytes;
};
_Static_assert(sizeof(struct policy_entry) == 24, "policy_entry layout is shared with userspace");
