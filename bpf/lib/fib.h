/* SPDX-License-Identifier: GPL-2.0 */
/* What a router does to a packet it forwards (TTL / hop limit), and native routing's send path
 * (cluster mode, --routing-mode native): a pod's packet to another node's pod leaves through the
 * underlay device straight from the pod's host veth to the other node (bpf_redirect_neigh with that
 * node's address as the next hop: the kernel's neighbour table), instead of going up the host stack's
 * input and forwarding path (ip_rcv, the input route lookup, ip_forward) first. A packet about to expire is never sent here (the caller keeps it
 * for the stack, which answers with ICMP time exceeded). Netfilter's FORWARD and POSTROUTING hooks do
 * not see these packets (Membrane installs nothing there). */
#pragma once

#include "common.h"
#include "parse.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* The TTL and protocol bytes form one 16-bit word of the IPv4 header checksum. */
union ttl_proto_word {
	__u16 word;
	__u8 bytes[2];
};

/* RFC 1624's incremental update of a one's complement checksum for one 16-bit word changed from old to
 * new, as the words sit in memory (the sum is byte-order agnostic). Done here rather than with
 * bpf_l3_csum_replace: the program writes the packet directly anyway, and a helper call per forwarded
 * packet (its writability check included) is what a router's hop should not cost. */
static __always_inline __u16 csum_replace16(__u16 check, __u16 old, __u16 new)
{
	__u32 sum = (__u16)~check + (__u32)(__u16)~old + new;

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* Decrements the TTL (IPv4, checksum updated) or hop limit (IPv6) in place. 0, or <0 when the header
 * could not be read (nothing changed, the caller leaves the packet to the stack). Only the header
 * checksum changes, by the inverse of the TTL's change: a CHECKSUM_COMPLETE sum stays valid. */
static __always_inline int route_hop(struct __sk_buff *skb, __u8 family)
{
	void *data, *data_end;

	if (family == MBR_FAMILY_IPV4) {
		union ttl_proto_word old_word, new_word;
		struct iphdr *ip;

		if (!linear_headers(skb, ETH_HLEN + sizeof(*ip), &data, &data_end))
			return -1;
		ip = data + ETH_HLEN;
		old_word.bytes[0] = ip->ttl;
		old_word.bytes[1] = ip->protocol;
		new_word.bytes[0] = ip->ttl - 1;
		new_word.bytes[1] = ip->protocol;
		ip->ttl = new_word.bytes[0];
		ip->check = csum_replace16(ip->check, old_word.word, new_word.word);
		return 0;
	} else {
		struct ipv6hdr *ip6;

		if (!linear_headers(skb, ETH_HLEN + sizeof(*ip6), &data, &data_end))
			return -1;
		ip6 = data + ETH_HLEN;
		ip6->hop_limit--; /* IPv6 has no header checksum */
		return 0;
	}
}

/* The smallest MTU the agent gives a pod (endpoint/recipe.ts, network/index.ts): a packet no longer
 * fits any pod's, so fits_mtu needs no helper call for the small packets most flows are made of. */
#define MBR_POD_MTU_MIN 576

/* Whether a packet for a local pod fits the pod's MTU, read from its host veth (the agent gives both
 * ends of the pair the endpoint's MTU, and the pod cannot change the host end): its L3 length, or for
 * a GSO packet each segment's (IP and TCP headers plus gso_size), as ip_forward judges a packet it
 * forwards into that veth. Why: bpf_redirect_peer checks only the whole packet against the pod's
 * device, with 18 bytes to spare, drops a larger one without a word (no fragments, no ICMP "need to
 * frag", so a sender never learns the path MTU) and lets any GSO packet through, segments above the
 * MTU included. A caller hands what does not fit to the stack, which does what a router does.
 * l3_off, l3_len: where the IP header starts, the packet's length from there; l4_off: where its L4
 * header starts. A GSO packet that is not TCP, or a device that cannot be asked, does not fit. */
static __always_inline bool fits_mtu(struct __sk_buff *skb, __u32 ifindex, __u32 l3_off, __u32 l3_len, __u32 l4_off,
				     __u8 proto)
{
	__u32 mtu = 1, len = l3_len; /* 1: asks for the device's MTU (any length that small passes) */
	__u8 doff;

	if (!skb->gso_size && l3_len <= MBR_POD_MTU_MIN)
		return true;
	if (bpf_check_mtu(skb, ifindex, &mtu, 0, 0) != BPF_MTU_CHK_RET_SUCCESS)
		return false;
	if (skb->gso_size) {
		if (proto != IPPROTO_TCP || l4_off < l3_off || l4_bytes(skb, l4_off + 12, &doff, 1) < 0)
			return false;
		len = l4_off - l3_off + (doff >> 4) * 4 + skb->gso_size;
	}
	return len <= mtu;
}

/* Native routing, from tc ingress of the sending pod's host veth after its egress policy passed, for
 * a destination the caller found in another node's pod CIDR (te: that node's underlay address, the
 * gateway of the agent's route to the CIDR): a router's hop, then out of the underlay device to that
 * gateway with bpf_redirect_neigh (TC_ACT_REDIRECT), which fills in its MAC from the neighbour table
 * (resolving it if need be) with no route lookup at all. TC_ACT_OK (the stack forwards it, as before)
 * when the header cannot be read or no underlay device is known. */
static __always_inline int native_forward(struct __sk_buff *skb, __u8 family, __u32 underlay_ifindex,
					  const struct tunnel_endpoint *te)
{
	struct bpf_redir_neigh nh;
	int hop;

	if (!underlay_ifindex)
		return TC_ACT_OK;
	hop = route_hop(skb, family);
	if (hop < 0)
		return TC_ACT_OK;
	__builtin_memset(&nh, 0, sizeof(nh));
	if (te->family == MBR_FAMILY_IPV4) {
		nh.nh_family = AF_INET;
		__builtin_memcpy(&nh.ipv4_nh, te->addr, 4);
	} else {
		nh.nh_family = AF_INET6;
		__builtin_memcpy(nh.ipv6_nh, te->addr, 16);
	}
	return bpf_redirect_neigh(underlay_ifindex, &nh, sizeof(nh), 0);
}
