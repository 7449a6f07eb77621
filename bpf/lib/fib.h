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

/* Decrements the TTL (IPv4, checksum updated) or hop limit (IPv6). 0; <0: the header could not be
 * read (nothing changed, the caller leaves the packet to the stack); >0: the checksum update failed
 * after the TTL was rewritten (the caller must drop: a packet with a bad checksum must not leave). */
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
		/* Incremental checksum update over the word as it sits in memory: byte-order agnostic. */
		if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old_word.word,
					new_word.word, sizeof(__u16)) < 0)
			return 1;
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
	if (hop > 0)
		return TC_ACT_SHOT; /* TTL already rewritten: a packet with a bad checksum must not leave */
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
