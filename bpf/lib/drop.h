/* SPDX-License-Identifier: GPL-2.0 */
/* Drop reasons and the drop counter layout. The current program never drops (forwarding only);
 * policy and conntrack issues will add reasons here. Numbers are ABI: userspace decodes them and the
 * drop_counters map is indexed by them, so only append. */
#pragma once

#include "common.h"

enum drop_reason {
	DROP_REASON_UNKNOWN = 0,
	DROP_REASON_POLICY_DENIED = 1,
	DROP_REASON_INVALID_PACKET = 2,
	DROP_REASON_CT_MAP_FULL = 3,
	DROP_REASON_UNKNOWN_ENDPOINT = 4,
	DROP_REASON_SOURCE_SPOOFED = 5,
	DROP_REASON_MAX = 64, /* size of drop_counters; keep room for later reasons */
};

struct drop_counter {
	__u64 packets;
	__u64 bytes;
};
