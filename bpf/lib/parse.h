/* SPDX-License-Identifier: GPL-2.0 */
/* Packet parsing for anti-spoofing, conntrack and policy: family, addresses, TTL, L4 protocol (past
 * IPv6 extension headers), ports, TCP flags, ICMP type. L4 fields are read with bpf_skb_load_bytes,
 * which works on non-linear skbs and keeps the verifier's job small.
 *
 * Fail closed: what cannot be classified is dropped with its own reason rather than passed as "port
 * 0", which an any-port allow would admit past a port deny:
 *  - an IPv4/IPv6 header that is not one (DROP_INVALID_PACKET);
 *  - a TCP/UDP/SCTP/ICMP header shorter than its fixed part, also in a first fragment
 *    (DROP_CT_TRUNCATED: the split-SYN attack, a SYN whose first fragment holds 8 bytes of TCP);
 *  - an IPv6 header chain longer than IPV6_MAX_EXTHDRS (DROP_INVALID_IPV6_EXTHDR);
 *  - a later fragment whose first fragment was not seen (DROP_FRAG_NOT_FOUND), or that overlaps the
 *    first fragment's L4 header (DROP_INVALID_PACKET).
 * A first fragment records its ports in the `fragments` map (fragments.h); later fragments take them
 * from there, so conntrack and policy see every fragment as the first one. */
#pragma once

#include "maps.h"

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
/* Extension headers walked before giving up (hop-by-hop, routing, fragment, destination options, AH:
 * 8 covers each once with room to spare; Linux itself accepts longer chains). */
#define IPV6_MAX_EXTHDRS 8

enum parse_result {
	PARSE_IP = 0,    /* p describes an IPv4/IPv6 packet */
	PARSE_OTHER = 1, /* not IP (ARP, ...): the caller decides */
	PARSE_DROP = 2,  /* drop with p->drop_reason; p holds what was parsed (family, addresses) */
};

struct pkt {
	__u8 family;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 has_l4;     /* ports/type are known (read here, or from the fragments map) */
	__u8 icmp_error; /* ICMP(v6) error: l4_off + 8 holds the offending packet's header */
	__u8 icmp_echo;
	__u8 hop_limit;  /* TTL / hop limit as received */
	__be16 sport;
	__be16 dport;
	__u32 seq; /* TCP sequence number, host order */
	__u32 ack; /* TCP acknowledgment number, host order */
	__u16 l4_off;
	__u8 later_fragment; /* a non-first fragment: no L4 header, ports from the fragments map */
	__u8 drop_reason;    /* PARSE_DROP: enum drop_reason */
	__u8 tcp_bare;       /* TCP: nothing after the header (len <= l4_off + data offset): ACK/FIN/RST only */
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

/* Bytes of L4 header a packet of this protocol must carry for its ports/type to be known. */
static __always_inline __u32 l4_min_len(__u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP:
		return 20;
	case IPPROTO_SCTP:
		return 12;
	case IPPROTO_UDP:
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return 8;
	}
	return 0; /* other protocols: policy by protocol only */
}

/* len bytes at off: read in place when the linear part holds them (every packet of veth, GRO and
 * GSO here), else with bpf_skb_load_bytes. One helper call less per packet in every program. The
 * bound on off is the verifier's (a packet pointer's variable offset must be bounded); a header past
 * it takes the helper. 0, or <0 when the packet is shorter. */
static __always_inline long l4_bytes(struct __sk_buff *skb, __u32 off, void *buf, const __u32 len)
{
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;

	if (off <= 1024 && data + off + len <= data_end) {
		__builtin_memcpy(buf, data + off, len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, buf, len);
}

/* Reads ports / flags / ICMP type at p->l4_off; has_l4 stays 0 when the header is cut short. */
static __always_inline void parse_l4(struct __sk_buff *skb, struct pkt *p)
{
	__u8 hdr[20];

	switch (p->proto) {
	case IPPROTO_TCP:
		if (l4_bytes(skb, p->l4_off, hdr, 20) < 0)
			return;
		__builtin_memcpy(&p->sport, hdr, 2);
		__builtin_memcpy(&p->dport, hdr + 2, 2);
		p->seq = ((__u32)hdr[4] << 24) | ((__u32)hdr[5] << 16) | ((__u32)hdr[6] << 8) | hdr[7];
		p->ack = ((__u32)hdr[8] << 24) | ((__u32)hdr[9] << 16) | ((__u32)hdr[10] << 8) | hdr[11];
		p->tcp_flags = hdr[13];
		p->tcp_bare = p->len <= (__u32)p->l4_off + (hdr[12] >> 4) * 4;
		p->has_l4 = 1;
		return;
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if ((p->proto == IPPROTO_UDP ? l4_bytes(skb, p->l4_off, hdr, 8) : l4_bytes(skb, p->l4_off, hdr, 12)) < 0)
			return;
		__builtin_memcpy(&p->sport, hdr, 2);
		__builtin_memcpy(&p->dport, hdr + 2, 2);
		p->has_l4 = 1;
		return;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		if (l4_bytes(skb, p->l4_off, hdr, 8) < 0)
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

static __always_inline int parse_drop(struct pkt *p, __u8 reason)
{
	p->drop_reason = reason;
	return PARSE_DROP;
}

/* The L4 header of a packet that is not a later fragment. `avail`: bytes of L4 the (first) fragment
 * holds by its IP length; ~0 for an unfragmented packet (the skb length decides). */
static __always_inline int parse_l4_required(struct __sk_buff *skb, struct pkt *p, __u32 avail)
{
	__u32 need = l4_min_len(p->proto);

	if (!need)
		return PARSE_IP;
	if (avail < need)
		return parse_drop(p, DROP_CT_TRUNCATED);
	parse_l4(skb, p);
	return p->has_l4 ? PARSE_IP : parse_drop(p, DROP_CT_TRUNCATED);
}

static __always_inline void frag_key_of(struct frag_key *k, const struct pkt *p, __u8 proto, __u32 id)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->family = p->family;
	k->proto = proto;
	k->id = id;
	__builtin_memcpy(k->saddr, p->saddr, 16);
	__builtin_memcpy(k->daddr, p->daddr, 16);
}

/* A first fragment: its header must be whole; its ports are remembered for the rest. */
static __always_inline int first_fragment(struct __sk_buff *skb, struct pkt *p, __u32 avail, __u8 key_proto, __u32 id)
{
	struct frag_key k;
	struct frag_value v;
	int r = parse_l4_required(skb, p, avail);

	if (r != PARSE_IP)
		return r;
	frag_key_of(&k, p, key_proto, id);
	v.sport = p->sport;
	v.dport = p->dport;
	v.proto = p->proto;
	v.icmp_type = p->icmp_type;
	v.icmp_echo = p->icmp_echo;
	v.pad = 0;
	bpf_map_update_elem(&fragments, &k, &v, BPF_ANY);
	return PARSE_IP;
}

/* A later fragment (offset_bytes > 0) takes the ports its first fragment recorded. */
static __always_inline int later_fragment(struct pkt *p, __u8 key_proto, __u32 id, __u32 offset_bytes)
{
	struct frag_key k;
	struct frag_value *v;

	frag_key_of(&k, p, key_proto, id);
	v = bpf_map_lookup_elem(&fragments, &k);
	if (!v)
		return parse_drop(p, DROP_FRAG_NOT_FOUND);
	/* Overlapping the first fragment's L4 header would rewrite ports or flags after the check. */
	if (offset_bytes < l4_min_len(v->proto))
		return parse_drop(p, DROP_INVALID_PACKET);
	p->proto = v->proto;
	p->sport = v->sport;
	p->dport = v->dport;
	p->icmp_type = v->icmp_type;
	p->icmp_echo = v->icmp_echo;
	p->has_l4 = 1;
	p->later_fragment = 1;
	return PARSE_IP;
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt *p)
{
	void *data, *data_end;
	struct iphdr *ip;
	__u16 frag, tot_len;
	__u32 hlen;

	if (!linear_headers(skb, ETH_HLEN + sizeof(*ip), &data, &data_end))
		return parse_drop(p, DROP_INVALID_PACKET);
	ip = data + ETH_HLEN;
	p->family = MBR_FAMILY_IPV4;
	p->proto = ip->protocol;
	p->hop_limit = ip->ttl;
	__builtin_memcpy(p->saddr, &ip->saddr, 4);
	__builtin_memcpy(p->daddr, &ip->daddr, 4);
	if (ip->ihl < 5 || ip->version != 4)
		return parse_drop(p, DROP_INVALID_PACKET);
	hlen = ip->ihl * 4;
	p->l4_off = ETH_HLEN + hlen;
	frag = bpf_ntohs(ip->frag_off);
	if (!(frag & (IP_MF | IP_OFFSET)))
		return parse_l4_required(skb, p, ~0U);
	/* Fragmented (never GSO): the IP length is trustworthy and says what this fragment holds. */
	tot_len = bpf_ntohs(ip->tot_len);
	if (tot_len < hlen)
		return parse_drop(p, DROP_INVALID_PACKET);
	if (frag & IP_OFFSET)
		return later_fragment(p, p->proto, bpf_ntohs(ip->id), (frag & IP_OFFSET) * 8);
	return first_fragment(skb, p, tot_len - hlen, p->proto, bpf_ntohs(ip->id));
}

static __always_inline bool ipv6_is_exthdr(__u8 nexthdr)
{
	return nexthdr == 0 || nexthdr == 43 || nexthdr == 44 || nexthdr == 51 || nexthdr == 60;
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, struct pkt *p)
{
	void *data, *data_end;
	struct ipv6hdr *ip6;
	__u32 off, end, id = 0, frag_off = 0;
	__u8 nexthdr, frag_proto = 0, frag_seen = 0, more = 0;
	__u8 ext[8];

	if (!linear_headers(skb, ETH_HLEN + sizeof(*ip6), &data, &data_end))
		return parse_drop(p, DROP_INVALID_PACKET);
	ip6 = data + ETH_HLEN;
	p->family = MBR_FAMILY_IPV6;
	p->hop_limit = ip6->hop_limit;
	__builtin_memcpy(p->saddr, &ip6->saddr, 16);
	__builtin_memcpy(p->daddr, &ip6->daddr, 16);
	if (ip6->version != 6)
		return parse_drop(p, DROP_INVALID_PACKET);
	nexthdr = ip6->nexthdr;
	end = ETH_HLEN + sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	off = ETH_HLEN + sizeof(*ip6);

#pragma unroll
	for (int i = 0; i < IPV6_MAX_EXTHDRS; i++) {
		if (!ipv6_is_exthdr(nexthdr) || frag_off)
			break;
		if (nexthdr == 44) { /* fragment: next header, reserved, offset+M, identification */
			if (bpf_skb_load_bytes(skb, off, ext, 8) < 0)
				return parse_drop(p, DROP_INVALID_PACKET);
			frag_seen = 1;
			frag_proto = ext[0];
			frag_off = (((__u32)ext[2] << 8) | ext[3]) & 0xfff8;
			more = ext[3] & 1;
			id = ((__u32)ext[4] << 24) | ((__u32)ext[5] << 16) | ((__u32)ext[6] << 8) | ext[7];
			nexthdr = ext[0];
			off += 8;
			continue;
		}
		if (bpf_skb_load_bytes(skb, off, ext, 2) < 0)
			return parse_drop(p, DROP_INVALID_PACKET);
		/* AH counts its length in 4-byte units minus 2; the others in 8-byte units minus 1. */
		off += nexthdr == 51 ? ((__u32)ext[1] + 2) * 4 : ((__u32)ext[1] + 1) * 8;
		nexthdr = ext[0];
	}
	p->proto = nexthdr;
	p->l4_off = off;
	if (frag_off) /* a later fragment: the rest is payload */
		return later_fragment(p, frag_proto, id, frag_off);
	if (ipv6_is_exthdr(nexthdr))
		return parse_drop(p, DROP_INVALID_IPV6_EXTHDR);
	if (frag_seen && more)
		return first_fragment(skb, p, end > off ? end - off : 0, frag_proto, id);
	return parse_l4_required(skb, p, ~0U); /* unfragmented, or an atomic fragment */
}

/* Classifies the packet. PARSE_DROP leaves the reason in p->drop_reason. */
static __always_inline int parse_packet(struct __sk_buff *skb, struct pkt *p)
{
	__builtin_memset(p, 0, sizeof(*p));
	p->len = skb->len;
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return parse_ipv4(skb, p);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(skb, p);
	return PARSE_OTHER;
}

static __always_inline bool ipv6_link_local(const __u8 *a)
{
	return a[0] == 0xfe && (a[1] & 0xc0) == 0x80; /* fe80::/10 */
}

/* A destination that never leaves the link: link-local unicast or link-scope multicast (ffx2::/16). */
static __always_inline bool ipv6_link_scoped(const __u8 *a)
{
	return ipv6_link_local(a) || (a[0] == 0xff && (a[1] & 0x0f) == 0x02);
}

static __always_inline bool ipv6_unspecified(const __u8 *a)
{
	__u64 w[2];

	__builtin_memcpy(w, a, 16);
	return w[0] == 0 && w[1] == 0;
}

/* ICMPv6 messages that only make sense on one link: neighbour discovery and MLD. */
static __always_inline bool is_icmp6_ndp(const struct pkt *p)
{
	return p->family == MBR_FAMILY_IPV6 && p->proto == IPPROTO_ICMPV6 && p->has_l4 && !p->later_fragment &&
	       p->icmp_type >= 133 && p->icmp_type <= 137;
}

static __always_inline bool is_icmp6_mld(const struct pkt *p)
{
	return p->family == MBR_FAMILY_IPV6 && p->proto == IPPROTO_ICMPV6 && p->has_l4 && !p->later_fragment &&
	       ((p->icmp_type >= 130 && p->icmp_type <= 132) || p->icmp_type == 143);
}

/* A TCP SYN without ACK: the first packet of a connection (conntrack's new-flow and server-port marks). */
static __always_inline bool tcp_syn_only(const struct pkt *p)
{
	return p->proto == IPPROTO_TCP && p->has_l4 && (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
}
