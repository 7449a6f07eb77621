/* SPDX-License-Identifier: GPL-2.0 */
/* Fragment tracking layout (logic in parse.h). A datagram is identified by its addresses, its IP id
 * and a protocol byte: for IPv4 the header's protocol, for IPv6 the Fragment header's next header
 * (the same in every fragment of a datagram, whatever extension headers follow it in the first).
 * The value is what the first fragment told us: the L4 protocol and ports, so later fragments meet
 * conntrack and policy with the first fragment's tuple and so get its verdict. */
#pragma once

#include "common.h"

struct frag_key {
	__u8 family;
	__u8 proto;
	__u16 pad;
	__u32 id; /* IPv4: the 16-bit id (host order); IPv6: the 32-bit identification (host order) */
	__u8 saddr[16];
	__u8 daddr[16];
};
_Static_assert(sizeof(struct frag_key) == 40, "frag_key layout is shared with userspace");

struct frag_value {
	__be16 sport;
	__be16 dport;
	__u8 proto;     /* the L4 protocol found in the first fragment */
	__u8 icmp_type;
	__u8 icmp_echo;
	__u8 pad;
};
_Static_assert(sizeof(struct frag_value) == 8, "frag_value layout is shared with userspace");
