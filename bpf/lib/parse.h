/* SPDX-License-Identifier: GPL-2.0 */
/* Packet parsing for conntrack and policy: family, addresses, L4 protocol, ports, TCP flags, ICMP
 * type. L4 fields are read with bpf_skb_load_bytes, which works on non-linear skbs and keeps the
 * verifier's job small. Not handled: L4 of non-first IPv4/IPv6 fragments (ports read as 0). */
#pragma once

#include "common.h"

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

struct pkt {
	__u8 family;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 has_l4;     /* ports/type were read (not a later fragment, not truncated) */
	__u8 icmp_error; /* ICMP(v6) error: l4_off + 8 holds the offending packet's header */
	__u8 icmp_echo;
	__u8 pad;
	__be16 sport;
	__be16 dport;
	__u32 seq; /* TCP sequence number, host order */
	__u16 l4_off;
	__u16 pad2;
	__u32 len;
	__u8 saddr[16];
	__u8 daddr[16];
};

static __always_inline bool icmp_is_error(__u8 family, __u8 type)
{
	if (family == MBR_FAMILY_IPV4)
		return type == 3 || type == 11 || type == 12; /* unreachable, time exceeded, parameter problem */
	return type >= 1 && type <= 4; /* unreachable, too big, time exceeded, parameter problem */
}

static __always_inline bool icmp_is_echo(__u8 family, __u8 type)
{
	return family == MBR_FAMILY_IPV4 ? (type == 8 || type == 0) : (type == 128 || type == 129);
}

/* Reads ports / flags / ICMP type at p->l4_off. */
static __always_inline void parse_l4(struct __sk_buff *skb, struct pkt *p)
{
	__u8 hdr[16];

	switch (p->proto) {
	case IPPROTO_TCP:
		if (bpf_skb_load_bytes(skb, p->l4_off, hdr, 14) < 0)
			return;
		__builtin_memcpy(&p->sport, hdr, 2);
		__builtin_memcpy(&p->dport, hdr + 2, 2);
		p->seq = ((__u32)hdr[4] << 24) | ((__u32)hdr[5] << 16) | ((__u32)hdr[6] << 8) | hdr[7];
		p->tcp_flags = hdr[13];
		p->has_l4 = 1;
		return;
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (bpf_skb_load_bytes(skb, p->l4_off, hdr, 4) < 0)
			return;
		__builtin_memcpy(&p->sport, hdr, 2);
		__builtin_memcpy(&p->dport, hdr + 2, 2);
		p->has_l4 = 1;
		return;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		if (bpf_skb_load_bytes(skb, p->l4_off, hdr, 8) < 0)
			return;
		p->icmp_type = hdr[0];
		p->has_l4 = 1;
		if (icmp_is_echo(p->family, hdr[0])) {
			/* Request and reply share the identifier: both ports hold it, so a reply's
			 * reversed tuple is the request's. */
			p->icmp_echo = 1;
			__builtin_memcpy(&p->sport, hdr + 4, 2);
			__builtin_memcpy(&p->dport, hdr + 4, 2);
		} else if (icmp_is_error(p->family, hdr[0])) {
			p->icmp_error = 1;
		}
		return;
	}
}

/* IPv6 extension headers we step over (bounded: at most 4). */
static __always_inline bool parse_ipv6_ext(struct __sk_buff *skb, struct pkt *p)
{
	__u8 nexthdr = p->proto;
	__u32 off = p->l4_off;
	__u8 ext[4];

#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (nexthdr == 0 || nexthdr == 43 || nexthdr == 60) { /* hop-by-hop, routing, dest opts */
			if (bpf_skb_load_bytes(skb, off, ext, 2) < 0)
				return false;
			nexthdr = ext[0];
			off += ((__u32)ext[1] + 1) * 8;
		} else if (nexthdr == 44) { /* fragment */
			if (bpf_skb_load_bytes(skb, off, ext, 4) < 0)
				return false;
			nexthdr = ext[0];
			off += 8;
			if ((((__u16)ext[2] << 8) | ext[3]) & 0xfff8)
				p->has_l4 = 2; /* marker: a later fragment, no L4 header */
		} else {
			break;
		}
	}
	p->proto = nexthdr;
	p->l4_off = off;
	return true;
}

/* false: not IP, or a header we cannot read (the caller lets it pass: policy is about IP flows). */
static __always_inline bool parse_packet(struct __sk_buff *skb, struct pkt *p)
{
	void *data, *data_end;

	__builtin_memset(p, 0, sizeof(*p));
	p->len = skb->len;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip;

		if (!linear_headers(skb, ETH_HLEN + sizeof(*ip), &data, &data_end))
			return false;
		ip = data + ETH_HLEN;
		if (ip->ihl < 5)
			return false;
		p->family = MBR_FAMILY_IPV4;
		p->proto = ip->protocol;
		__builtin_memcpy(p->saddr, &ip->saddr, 4);
		__builtin_memcpy(p->daddr, &ip->daddr, 4);
		p->l4_off = ETH_HLEN + ip->ihl * 4;
		if (ip->frag_off & bpf_htons(0x1fff))
			return true; /* a later fragment: no L4 header */
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6;

		if (!linear_headers(skb, ETH_HLEN + sizeof(*ip6), &data, &data_end))
			return false;
		ip6 = data + ETH_HLEN;
		p->family = MBR_FAMILY_IPV6;
		p->proto = ip6->nexthdr;
		__builtin_memcpy(p->saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr, &ip6->daddr, 16);
		p->l4_off = ETH_HLEN + sizeof(*ip6);
		if (!parse_ipv6_ext(skb, p))
			return false;
		if (p->has_l4 == 2) {
			p->has_l4 = 0;
			return true;
		}
	} else {
		return false;
	}
	parse_l4(skb, p);
	return true;
}

/* ICMPv6 neighbour discovery and MLD always pass: without them nothing works at all. */
static __always_inline bool is_icmp6_control(const struct pkt *p)
{
	return p->family == MBR_FAMILY_IPV6 && p->proto == IPPROTO_ICMPV6 && p->has_l4 &&
	       ((p->icmp_type >= 130 && p->icmp_type <= 137) || p->icmp_type == 143);
}
