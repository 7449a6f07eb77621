/* SPDX-License-Identifier: GPL-2.0 */
/* Conntrack logic over the `conntrack` map (layout and scopes in conntrack.h). */
#pragma once

#include "maps.h"
#include "parse.h"

enum ct_result {
	CT_NEW = 0,
	CT_ESTABLISHED = 1, /* a later packet of a flow this scope admitted */
	CT_REPLY = 2,       /* a packet of the reverse direction */
	CT_RELATED = 3,     /* an ICMP error about a tracked flow */
};

static __always_inline void ct_key_of(struct ct_key *k, const struct pkt *p, __u8 scope, bool reverse)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->family = p->family;
	k->proto = p->proto;
	k->scope = scope;
	if (!reverse) {
		k->sport = p->sport;
		k->dport = p->dport;
		__builtin_memcpy(k->saddr, p->saddr, 16);
		__builtin_memcpy(k->daddr, p->daddr, 16);
	} else {
		k->sport = p->dport;
		k->dport = p->sport;
		__builtin_memcpy(k->saddr, p->daddr, 16);
		__builtin_memcpy(k->daddr, p->saddr, 16);
	}
}

static __always_inline bool ct_expired(const struct ct_entry *e, __u8 proto, __u64 now)
{
	__u64 lifetime = CT_LIFETIME_OTHER;

	if (proto == IPPROTO_TCP) {
		if (e->state == CT_STATE_NEW)
			lifetime = CT_LIFETIME_TCP_SYN;
		else if (e->state == CT_STATE_ESTABLISHED)
			lifetime = CT_LIFETIME_TCP;
		else
			lifetime = CT_LIFETIME_TCP_CLOSING;
	}
	return now - e->last_seen_ns > lifetime;
}

static __always_inline bool tcp_syn_only(const struct pkt *p)
{
	return p->proto == IPPROTO_TCP && p->has_l4 && (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
}

/* Updates counters and TCP state; true when the packet finished the connection (RST, or the ACK
 * after FINs both ways): the caller reports and deletes the entry, so connection churn does not keep
 * the LRU full (evictions cost ~1 us per insert and take idle live flows with them). */
static __always_inline bool ct_update(struct ct_entry *e, const struct pkt *p, int dir, __u64 now)
{
	e->last_seen_ns = now;
	if (dir == CT_DIR_FORWARD) {
		e->packets[0]++;
		e->bytes[0] += p->len;
		e->tcp_flags_seen[0] |= p->tcp_flags;
	} else {
		e->packets[1]++;
		e->bytes[1] += p->len;
		e->tcp_flags_seen[1] |= p->tcp_flags;
	}
	if (p->proto != IPPROTO_TCP)
		return false;
	if (p->tcp_flags & TCP_RST) {
		e->state = CT_STATE_CLOSED;
		return true;
	}
	if ((p->tcp_flags & TCP_FIN) && e->state < CT_STATE_CLOSING)
		e->state = CT_STATE_CLOSING;
	else if (dir == CT_DIR_REPLY && e->state == CT_STATE_NEW && (p->tcp_flags & TCP_ACK))
		e->state = CT_STATE_ESTABLISHED;
	return (e->tcp_flags_seen[0] & TCP_FIN) && (e->tcp_flags_seen[1] & TCP_FIN) &&
	       (p->tcp_flags & (TCP_ACK | TCP_FIN)) == TCP_ACK;
}

/* The offending packet inside an ICMP error: is it part of a flow we track (any scope, either way)? */
static __always_inline bool ct_related(struct __sk_buff *skb, const struct pkt *p)
{
	struct ct_key k;
	__u32 off = p->l4_off + 8;
	__u8 hdr[40];
	__u8 ports[8];
	__u32 l4;

	__builtin_memset(&k, 0, sizeof(k));
	k.family = p->family;
	if (p->family == MBR_FAMILY_IPV4) {
		if (bpf_skb_load_bytes(skb, off, hdr, 20) < 0)
			return false;
		k.proto = hdr[9];
		__builtin_memcpy(k.saddr, hdr + 12, 4);
		__builtin_memcpy(k.daddr, hdr + 16, 4);
		l4 = off + (hdr[0] & 0xf) * 4;
	} else {
		if (bpf_skb_load_bytes(skb, off, hdr, 40) < 0)
			return false;
		k.proto = hdr[6];
		__builtin_memcpy(k.saddr, hdr + 8, 16);
		__builtin_memcpy(k.daddr, hdr + 24, 16);
		l4 = off + 40;
	}
	if (bpf_skb_load_bytes(skb, l4, ports, 8) < 0)
		return false;
	if (k.proto == IPPROTO_ICMP || k.proto == IPPROTO_ICMPV6) {
		__builtin_memcpy(&k.sport, ports + 4, 2);
		__builtin_memcpy(&k.dport, ports + 4, 2);
	} else {
		__builtin_memcpy(&k.sport, ports, 2);
		__builtin_memcpy(&k.dport, ports + 2, 2);
	}
	/* The inner packet was sent by one side of the flow: try it as the flow's forward tuple and as its
	 * reverse, in every scope. Only ICMP errors pay for this. */
#pragma unroll
	for (int i = 0; i < 6; i++) {
		struct ct_key q = k;

		q.scope = i % 3;
		if (i >= 3) {
			__builtin_memcpy(q.saddr, k.daddr, 16);
			__builtin_memcpy(q.daddr, k.saddr, 16);
			q.sport = k.dport;
			q.dport = k.sport;
		}
		if (bpf_map_lookup_elem(&conntrack, &q))
			return true;
	}
	return false;
}

/* Established, reply, related or new. *out is the entry for established and reply packets, *k its
 * key; *done says the connection just finished (see ct_update). */
static __always_inline int ct_lookup(struct __sk_buff *skb, const struct pkt *p, __u8 scope, struct ct_entry **out,
				     struct ct_key *k, bool *done)
{
	struct ct_entry *e;
	__u64 now = bpf_ktime_get_ns();
	bool syn = tcp_syn_only(p);

	ct_key_of(k, p, scope, false);
	e = bpf_map_lookup_elem(&conntrack, k);
	/* A SYN on an entry that is not a fresh, same-ISN attempt is a new connection (tuple reuse). */
	if (e && !ct_expired(e, p->proto, now) && !(syn && (e->state != CT_STATE_NEW || e->tcp_isn != p->seq))) {
		*done = ct_update(e, p, CT_DIR_FORWARD, now);
		*out = e;
		return CT_ESTABLISHED;
	}
	ct_key_of(k, p, scope == CT_SCOPE_LOCAL ? CT_SCOPE_LOCAL : scope ^ 1, true);
	e = bpf_map_lookup_elem(&conntrack, k);
	if (e && !ct_expired(e, p->proto, now) && !(syn && e->state >= CT_STATE_CLOSING)) {
		*done = ct_update(e, p, CT_DIR_REPLY, now);
		*out = e;
		return CT_REPLY;
	}
	if (p->icmp_error && ct_related(skb, p))
		return CT_RELATED;
	return CT_NEW;
}

static __always_inline void ct_create(const struct pkt *p, __u8 scope, __u32 src_identity, __u32 dst_identity,
				      __u32 rule_id, __u32 rule_id_ingress, __u8 flags, const struct endpoint_config *ep)
{
	struct ct_key k;
	struct ct_entry e;
	__u64 now = bpf_ktime_get_ns();

	ct_key_of(&k, p, scope, false);
	__builtin_memset(&e, 0, sizeof(e));
	e.created_ns = now;
	e.last_seen_ns = now;
	e.packets[0] = 1;
	e.bytes[0] = p->len;
	e.src_identity = src_identity;
	e.dst_identity = dst_identity;
	e.rule_id = rule_id;
	e.rule_id_ingress = rule_id_ingress;
	e.flags = flags;
	e.endpoint_id = ep->endpoint_id;
	e.ifindex = ep->ifindex;
	e.tcp_flags_seen[0] = p->tcp_flags;
	e.state = CT_STATE_ESTABLISHED; /* non-TCP */
	if (tcp_syn_only(p)) {
		e.state = CT_STATE_NEW;
		e.tcp_isn = p->seq;
	} else if (p->proto == IPPROTO_TCP && !(p->tcp_flags & (TCP_RST | TCP_FIN))) {
		/* Picked up mid-stream (after a table loss, or a stray segment of a finished connection):
		 * established once the other side answers, else gone with the short SYN lifetime. */
		e.state = CT_STATE_NEW;
	} else if (p->proto == IPPROTO_TCP && (p->tcp_flags & TCP_RST)) {
		e.state = CT_STATE_CLOSED;
	} else if (p->proto == IPPROTO_TCP && (p->tcp_flags & TCP_FIN)) {
		e.state = CT_STATE_CLOSING;
	}
	/* LRU: a full table evicts the least recently used flow rather than failing. */
	bpf_map_update_elem(&conntrack, &k, &e, BPF_ANY);
}
