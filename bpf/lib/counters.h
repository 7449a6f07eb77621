/* SPDX-License-Identifier: GPL-2.0 */
/* Counter updates, by endpoint id (ep_counters, maps.h): the caller has the id from the endpoint's
 * config or local_endpoints entry. Userspace zeroes a slot when the id goes to a new endpoint. Values
 * are per-CPU, hence plain increments. */
#pragma once

#include "maps.h"

static __always_inline void count_endpoint_tx(__u32 endpoint_id, __u32 len)
{
	struct endpoint_counters_value *c;

#ifdef MBR_NO_EP_COUNTERS /* measurement builds only */
	return;
#endif
	c = bpf_map_lookup_elem(&ep_counters, &endpoint_id);
	if (c) {
		c->tx_packets++;
		c->tx_bytes += len;
	}
}

static __always_inline void count_endpoint_rx(__u32 endpoint_id, __u32 len)
{
	struct endpoint_counters_value *c;

#ifdef MBR_NO_EP_COUNTERS /* measurement builds only */
	return;
#endif
	c = bpf_map_lookup_elem(&ep_counters, &endpoint_id);
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
