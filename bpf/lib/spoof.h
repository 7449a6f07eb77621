/* SPDX-License-Identifier: GPL-2.0 */
/* Anti-spoofing at the container's egress (from_container, before anything else, the redirect
 * short-cut included): a frame must carry the endpoint's own MAC as its source, and
 *  - IPv4: its own address as the source;
 *  - IPv6: its own address, or a link-local (or unspecified) source towards a destination on its own
 *    link (link-local, link-scope multicast, its gateway): neighbour discovery and MLD;
 *  - ARP: its own MAC as sender hardware address and its own address (or 0.0.0.0, a probe) as sender
 *    protocol address, so it cannot answer for another pod's address;
 *  - nothing else (another ethertype) leaves the container.
 * The checks compare against the endpoint_config the program looks up anyway; only an endpoint with
 * several addresses of a family (EP_F_EXTRA_ADDRS) pays a local_endpoints lookup for the others.
 * On a drop, *p holds the family, protocol and addresses for the DROP event. */
#pragma once

#include "maps.h"
#include "parse.h"

static __always_inline bool mac_eq(const __u8 *a, const __u8 *b)
{
	__u32 a4, b4;
	__u16 a2, b2;

	__builtin_memcpy(&a4, a, 4);
	__builtin_memcpy(&b4, b, 4);
	__builtin_memcpy(&a2, a + 4, 2);
	__builtin_memcpy(&b2, b + 4, 2);
	return a4 == b4 && a2 == b2;
}

static __always_inline bool ipv4_eq(const __u8 *a, const __u8 *b)
{
	__u32 x, y;

	__builtin_memcpy(&x, a, 4);
	__builtin_memcpy(&y, b, 4);
	return x == y;
}

/* Another address of the same endpoint (local_endpoints points at its interface). */
static __always_inline bool extra_address(const struct endpoint_config *ep, __u8 family, const __u8 *addr)
{
	struct local_endpoint *owner;
	struct ip_key key;

	if (!(ep->flags & EP_F_EXTRA_ADDRS))
		return false;
	__builtin_memset(&key, 0, sizeof(key));
	key.family = family;
	__builtin_memcpy(key.addr, addr, family == MBR_FAMILY_IPV4 ? 4 : 16);
	owner = bpf_map_lookup_elem(&local_endpoints, &key);
	return owner && owner->endpoint_id == ep->endpoint_id;
}

static __always_inline bool ipv4_source_ok(const struct endpoint_config *ep, const __u8 *saddr)
{
	return ((ep->flags & EP_F_HAS_IPV4) && ipv4_eq(saddr, ep->ipv4)) || extra_address(ep, MBR_FAMILY_IPV4, saddr);
}

static __always_inline bool ipv6_source_ok(const struct endpoint_config *ep, const __u8 *saddr, const __u8 *daddr)
{
	if ((ep->flags & EP_F_HAS_IPV6) && addr_eq(saddr, ep->ipv6))
		return true;
	if ((ipv6_link_local(saddr) || ipv6_unspecified(saddr)) && (ipv6_link_scoped(daddr) || addr_eq(daddr, ep->gateway6)))
		return true;
	return extra_address(ep, MBR_FAMILY_IPV6, saddr);
}

/* 0 when the frame may leave, else the drop reason. */
static __always_inline __u16 check_source(struct __sk_buff *skb, const struct endpoint_config *ep, struct pkt *p)
{
	void *data, *data_end;
	struct ethhdr *eth;

	__builtin_memset(p, 0, sizeof(*p));
	p->len = skb->len;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip;

		if (!linear_headers(skb, ETH_HLEN + sizeof(*ip), &data, &data_end))
			return DROP_INVALID_PACKET;
		ip = data + ETH_HLEN;
		p->family = MBR_FAMILY_IPV4;
		p->proto = ip->protocol;
		__builtin_memcpy(p->saddr, &ip->saddr, 4);
		__builtin_memcpy(p->daddr, &ip->daddr, 4);
		eth = data;
		if (!mac_eq(eth->h_source, ep->container_mac))
			return DROP_INVALID_SOURCE_MAC;
		return ipv4_source_ok(ep, p->saddr) ? 0 : DROP_SOURCE_SPOOFED;
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6;

		if (!linear_headers(skb, ETH_HLEN + sizeof(*ip6), &data, &data_end))
			return DROP_INVALID_PACKET;
		ip6 = data + ETH_HLEN;
		p->family = MBR_FAMILY_IPV6;
		p->proto = ip6->nexthdr;
		__builtin_memcpy(p->saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr, &ip6->daddr, 16);
		eth = data;
		if (!mac_eq(eth->h_source, ep->container_mac))
			return DROP_INVALID_SOURCE_MAC;
		return ipv6_source_ok(ep, p->saddr, p->daddr) ? 0 : DROP_SOURCE_SPOOFED;
	}
	if (skb->protocol == bpf_htons(ETH_P_ARP)) {
		/* Ethernet/IPv4 ARP: htype 1, ptype 0x0800, hlen 6, plen 4, op, sha, spa, tha, tpa. */
		__u8 *arp;

		if (!linear_headers(skb, ETH_HLEN + 28, &data, &data_end))
			return DROP_INVALID_PACKET;
		eth = data;
		arp = data + ETH_HLEN;
		p->family = MBR_FAMILY_IPV4;
		__builtin_memcpy(p->saddr, arp + 14, 4);
		__builtin_memcpy(p->daddr, arp + 24, 4);
		if (!mac_eq(eth->h_source, ep->container_mac) || !mac_eq(arp + 8, ep->container_mac))
			return DROP_INVALID_SOURCE_MAC;
		if (arp[0] != 0 || arp[1] != 1 || arp[2] != 0x08 || arp[3] != 0 || arp[4] != 6 || arp[5] != 4)
			return DROP_INVALID_PACKET;
		if (!(p->saddr[0] | p->saddr[1] | p->saddr[2] | p->saddr[3]))
			return 0; /* a probe (RFC 5227) claims no address */
		return ipv4_source_ok(ep, p->saddr) ? 0 : DROP_SOURCE_SPOOFED;
	}
	return DROP_UNSUPPORTED_L3;
}
