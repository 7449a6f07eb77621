/* SPDX-License-Identifier: GPL-2.0 */
/* Shared includes, constants and small packet helpers for the Membrane tc datapath. */
#pragma once

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <stdbool.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Address families as stored in map keys. Deliberately 4/6 rather than AF_INET/AF_INET6 so the
 * userspace encoder (shared/src/maps/codec.ts) needs no libc constants. */
#define MBR_FAMILY_IPV4 4
#define MBR_FAMILY_IPV6 6

/* skb->pkt_type of a frame for this host (linux/if_packet.h, which BPF programs do not include). */
#ifndef PACKET_HOST
#define PACKET_HOST 0
#endif

/* Key for "which endpoint owns this address": IPv4 lives in addr[0..3], the rest stays zero so a
 * v4 and a v6 key can never collide and userspace can build keys without knowing the family width. */
struct ip_key {
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};
_Static_assert(sizeof(struct ip_key) == 20, "ip_key layout is shared with userspace");

/* Make sure `len` bytes of headers are in the linear part of the skb and return fresh packet
 * pointers. GSO/GRO skbs from veth normally have headers linear already; the pull is the slow path. */
static __always_inline bool linear_headers(struct __sk_buff *skb, __u32 len, void **data, void **data_end)
{
	/* skb is opaque to the compiler at each read below: it must load data_end from the context
	 * register, never through &skb->data_end computed earlier and kept (spilled) in another register,
	 * a modified context pointer the verifier refuses (seen in the MBR_NO_ENFORCE build). */
	asm volatile("" : "+r"(skb));
	*data = (void *)(long)skb->data;
	*data_end = (void *)(long)skb->data_end;
	if (*data + len <= *data_end)
		return true;
	if (bpf_skb_pull_data(skb, len) < 0)
		return false;
	asm volatile("" : "+r"(skb));
	*data = (void *)(long)skb->data;
	*data_end = (void *)(long)skb->data_end;
	return *data + len <= *data_end;
}

/* Return codes under tcx (every program here is attached with a tcx link at the head of its hook's
 * chain: shared/src/bpf/tcx.ts). A tcx chain runs its programs in order until one returns anything but
 * TCX_NEXT: TC_ACT_OK is TCX_PASS, TC_ACT_SHOT TCX_DROP, TC_ACT_REDIRECT TCX_REDIRECT, and all three end
 * the chain; TC_ACT_UNSPEC is TCX_NEXT, and the kernel takes any other code as TCX_NEXT too (then the
 * device's classic tc filters, then the stack). Why:
 * - A verdict on a pod's packet is final, an allow (TC_ACT_OK, a redirect) as much as a drop: a program
 *   after ours gets no say, so it can neither take elsewhere a packet we steer to the L7 proxy or deliver
 *   into a pod nor re-decide what policy decided. The pods' host veths, the tunnel and host devices are
 *   ours alone, so nobody else's program is skipped there (Cilium makes the same choice by default).
 * - What we take no decision on, the node's own traffic on the underlay device (from_underlay, vxlan_rx),
 *   goes on to the next program (TCX_NEXT): that device is the node's, and the tools after ours must see
 *   its traffic as if we were not there.
 * - A drop can never turn into TCX_NEXT by mistake (a helper's negative errno returned as a verdict, a
 *   code tcx does not know): each program's verdict goes through tcx_final, which makes anything but a
 *   pass or a redirect (or, where allowed, TCX_NEXT) a drop. */
#define MBR_TCX_NEXT TC_ACT_UNSPEC

static __always_inline int tcx_final(int verdict, bool next_allowed)
{
	if (verdict == TC_ACT_OK || verdict == TC_ACT_REDIRECT || (next_allowed && verdict == MBR_TCX_NEXT))
		return verdict;
	return TC_ACT_SHOT;
}
