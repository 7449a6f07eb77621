/* SPDX-License-Identifier: GPL-2.0 */
/* Counter updates. Entries are created by userspace when an endpoint is configured; an interface
 * without an entry (not ours, or being torn down) is simply not counted, so the hot path never
 * inserts. Values are per-CPU, hence plain increments. */
#pragma once

#include "maps.h"

static __always_inline void count_endpoint_tx(__u32 host_ifindex, __u32 len)
{
	struct endpoint_counters_value *c;

#ifdef MBR_NO_EP_COUNTERS /* measurement builds only */
	return;
#endif
	c = bpf_map_lookup_elem(&endpoint_counters, &host_ifindex);
	if (c) {
		c->tx_packets++;
		c->tx_bytes += len;
	}
}

static __always_inline void count_endpoint_rx(__u32 host_ifindex, __u32 len)
{
	struct endpoint_counters_value *c;

#ifdef MBR_NO_EP_COUNTERS /* measurement builds only */
	return;
#endif
	c = bpf_map_lookup_elem(&endpoint_counters, &host_ifindex);
	if (c) {
		c->rx_packets++;
		c->rx_bytes += len;
	}
}

static __always_inline void count_drop(__u32 reason, __u32 len)
{
	struct drop_counter *c;

	if (reason >= DROP_REASON_MAX)
		reason = DROP_REASON_UNKNOWN;
	c = bpf_map_lookup_elem(&drop_counters, &reason);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}
