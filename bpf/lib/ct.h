/* SPDX-License-Identifier: GPL-2.0 */
/* Conntrack logic over the `conntrack` map (layout, scopes and binding in conntrack.h).
 *
 * An enforcement point asks as (scope, self, peer): self is the endpoint id whose hook this is
 * (LOCAL: the sender), peer the receiver for LOCAL and 0 otherwise. An entry matches only when it was
 * made by that same point: forward packets need entry (owner, peer) = (self, peer), replies the
 * mirror image (LOCAL: (peer, self); otherwise the reverse scope at the same endpoint). */
#pragma once

#include "ct_hint.h"
#include "maps.h"
#include "parse.h"

enum ct_result {
	CT_NEW = 0,
	CT_ESTABLISHED = 1,     /* a later packet of a flow this point admitted */
	CT_REPLY = 2,           /* a packet of the reverse direction */
	CT_RELATED = 3,         /* an ICMP error about a flow of this endpoint */
	CT_REVOKED_FORWARD = 4, /* the initiator of a revoked flow: check it as a new flow */
	CT_REVOKED_REPLY = 5,   /* the other side of a revoked flow: drop */
	/* A tunnel packet of a tracked flow whose VNI is not the peer identity the entry was admitted
	 * with (ct_lookup's peer_id): the flow is asked again before the entry is touched (enforce.h). */
	CT_PEER_CHANGED = 6,       /* a forward packet */
	CT_PEER_CHANGED_REPLY = 7, /* a reply */
};

/* The identity of the other side, as an entry made at `scope` recorded it. */
static __always_inline __u32 ct_peer_identity(const struct ct_entry *e, __u8 scope)
{
	return scope == CT_SCOPE_INGRESS ? e->src_identity : e->dst_identity;
}

static __always_inline __u8 ct_reverse_scope(__u8 scope)
{
	return scope == CT_SCOPE_LOCAL ? CT_SCOPE_LOCAL : scope ^ 1;
}

static __always_inline void ct_key_of(struct ct_key *k, const struct pkt *p, __u8 scope, bool reverse)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->family = p->family;
	k->proto = p->proto;
	k->scope = scope;
	if (!reverse) {
		k->sport = p->sport;
		k->dport = p->dport;
		__builtin_memcpy(k->saddr, p->saddr, CT_ADDR_LEN);
		__builtin_memcpy(k->daddr, p->daddr, CT_ADDR_LEN);
	} else {
		k->sport = p->dport;
		k->dport = p->sport;
		__builtin_memcpy(k->saddr, p->daddr, CT_ADDR_LEN);
		__builtin_memcpy(k->daddr, p->saddr, CT_ADDR_LEN);
	}
}

/* Conntrack's clock: CLOCK_MONOTONIC at the tick's resolution (bpf_ktime_get_coarse_ns, a plain
 * read) rather than the clocksource (bpf_ktime_get_ns: pvclock in a VM, ~4 % of the overlay's extra
 * CPU per connection in the cross-node profile). Lifetimes are seconds to hours and last_seen moves
 * once a second: a tick changes nothing. Userspace reads the stamps against CLOCK_MONOTONIC, which a
 * coarse stamp never runs ahead of. */
static __always_inline __u64 ct_now(void)
{
	return bpf_ktime_get_coarse_ns();
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
	/* Signed: a stamp a tick ahead of `now` (one taken with the fine clock, by an older datapath) is
	 * fresh, not 2^64 ns old. */
	return (__s64)(now - e->last_seen_ns) > (__s64)lifetime;
}

/* Entries owned per endpoint (and slot 0: the node), the datapath's half (see maps.h). */
static __always_inline void ct_count(__u32 owner, __s64 delta)
{
	__u32 node = 0;
	__s64 *n;

#ifdef MBR_NO_CT_COUNT /* measurement builds only: no share accounting */
	return;
#endif
	n = bpf_map_lookup_elem(&ct_owned, &owner);
	if (n)
		__sync_fetch_and_add(n, delta);
	n = bpf_map_lookup_elem(&ct_owned, &node);
	if (n)
		__sync_fetch_and_add(n, delta);
}

/* Would one more entry put `owner` over its share? */
static __always_inline bool ct_over_share(__u32 owner)
{
	const struct datapath_config *cfg = global_config();
	__s64 *owned, *reclaimed;

#ifdef MBR_NO_CT_COUNT
	return false;
#endif
	if (!cfg || !cfg->ct_endpoint_max)
		return false;
	owned = bpf_map_lookup_elem(&ct_owned, &owner);
	reclaimed = bpf_map_lookup_elem(&ct_reclaimed, &owner);
	if (!owned || !reclaimed)
		return false;
	return *owned - *reclaimed >= (__s64)cfg->ct_endpoint_max;
}

/* Deletes the entry a packet just finished, keeping the owner's count. */
static __always_inline void ct_delete(struct ct_key *k, __u32 owner)
{
	if (bpf_map_delete_elem(&conntrack, k) == 0)
		ct_count(owner, -1);
}

/* Marks the FIN of one direction acknowledged; true when this made both so. An atomic OR: in a
 * simultaneous close both ends' last ACKs run at once on two CPUs, and plain read-modify-writes of one
 * byte lost one of the two marks (the entry then stayed CLOSING until it expired). */
static __always_inline bool ct_fin_acked(struct ct_entry *e, __u32 bit)
{
	/* A 32-bit atomic with a result needs BPF v3 (-mcpu=v3): the OR goes to the aligned 64-bit word
	 * policy_port, proxy_port, fin_acked and leaves the first two alone. */
	__u64 *word = (__u64 *)&e->policy_port;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	const int shift = 32;
#else
	const int shift = 0;
#endif
	__u32 old;

	if (e->fin_acked & bit)
		return false;
	old = __sync_fetch_and_or(word, (__u64)bit << shift) >> shift;
	return !(old & bit) && ((old | bit) == (CT_FIN_ACKED_FWD | CT_FIN_ACKED_REPLY));
}

/* Updates counters and TCP state; true when the packet finished the connection (RST, or the packet
 * that acknowledged the second of the two FINs): the caller reports and deletes the entry, so
 * connection churn does not fill the table.
 *
 * Each FIN's acknowledgment is tracked (fin_acked): when both ends close at once, their FINs
 * cross, and each side then ACKs the other's FIN. Deleting on the first of those ACKs (as "an ACK
 * after FINs both ways" did) left the second one without an entry: a straggler that met policy as a
 * new flow and was reported as one (FLOW_NEW), 0.3-0.9 times per connection per node in the
 * cross-node connection-rate bench. A FIN is acknowledged by a packet of the other direction that
 * carries ACK and no FIN after it (that direction's own FIN goes after the acknowledgment, or crosses
 * it), or by the other direction's FIN whose acknowledgment number is past the first FIN's segment
 * (kept in tcp_isn; only the second FIN can acknowledge the first). A pure ACK that was in flight before the
 * FIN reached its sender can mark it early: the entry then goes one packet sooner, as before. Only the
packet that completes both marks reports the end (ct_fin_acked). */
static __always_inline bool ct_update(struct ct_entry *e, const struct pkt *p, int dir, __u64 now)
{
	__u8 *seen = &e->tcp_flags_seen[dir == CT_DIR_FORWARD ? 0 : 1];
	__u8 other = e->tcp_flags_seen[dir == CT_DIR_FORWARD ? 1 : 0];
	__u32 acks_other = dir == CT_DIR_FORWARD ? CT_FIN_ACKED_REPLY : CT_FIN_ACKED_FWD;
	bool done = false;
	bool fin_before = (*seen | other) & TCP_FIN;

	/* Stores that change nothing are skipped: both directions' CPUs touch the entry, and every
	 * store pulls its cache line over from the other CPU. last_seen_ns moves once a second (as in
	 * Cilium): the lifetimes it serves are seconds to hours. */
	if (now - e->last_seen_ns > CT_LAST_SEEN_STEP_NS)
		e->last_seen_ns = now;
	if ((*seen | p->tcp_flags) != *seen)
		*seen |= p->tcp_flags;
#ifndef MBR_CT_NO_PKT_COUNT /* measurement variant: no per-packet counter stores */
	if (dir == CT_DIR_FORWARD) {
		e->packets[0]++;
		e->bytes[0] += p->len;
	} else {
		e->packets[1]++;
		e->bytes[1] += p->len;
	}
#endif
	if (p->proto != IPPROTO_TCP)
		return false;
	if (p->tcp_flags & TCP_RST) {
		e->state = CT_STATE_CLOSED;
		return true;
	}
	/* tcp_isn is only read while the entry is NEW, which it never is again once a FIN was seen. */
	if (p->tcp_flags & TCP_FIN) {
		if (!fin_before)
			e->tcp_isn = p->seq;
		else if ((other & TCP_FIN) && (p->tcp_flags & TCP_ACK) && (__s32)(p->ack - e->tcp_isn) > 0)
			done = ct_fin_acked(e, acks_other);
	} else if ((other & TCP_FIN) && (p->tcp_flags & TCP_ACK)) {
		done = ct_fin_acked(e, acks_other);
	}
	if ((p->tcp_flags & TCP_FIN) && e->state < CT_STATE_CLOSING)
		e->state = CT_STATE_CLOSING;
	else if (dir == CT_DIR_REPLY && e->state == CT_STATE_NEW && (p->tcp_flags & TCP_ACK))
		e->state = CT_STATE_ESTABLISHED;
	return done;
}

static __always_inline bool ct_live_for(const struct ct_entry *e, __u32 owner, __u32 peer, __u8 proto, __u64 now)
{
	return e && e->endpoint_id == owner && e->peer_endpoint_id == peer && !(e->flags & CT_F_REVOKED) &&
	       !ct_expired(e, proto, now);
}

static __always_inline bool addr_eq(const __u8 *a, const __u8 *b)
{
	__u64 x[2], y[2];

	__builtin_memcpy(x, a, 16);
	__builtin_memcpy(y, b, 16);
	return x[0] == y[0] && x[1] == y[1];
}

/* An ICMP error is related when the packet it quotes belongs to a flow of this point's endpoint(s),
 * and it quotes a packet of the one receiving it: the quoted source is the error's destination. An
 * endpoint sending an error (egress, or pod to pod) is no router: the quoted packet must also have
 * been addressed to it. Only ICMP errors pay for the two lookups. */
static __always_inline bool ct_related(struct __sk_buff *skb, const struct pkt *p, __u8 scope, __u32 self, __u32 peer)
{
	__u64 now = ct_now();
	struct ct_key k, r;
	__u32 off = p->l4_off + 8;
	__u8 hdr[40];
	__u8 ports[8];
	__u32 l4;
	bool local = scope == CT_SCOPE_LOCAL;

	if (p->later_fragment || CT_KEY16) /* CT_KEY16: measurement builds (conntrack.h), no ICMP errors */
		return false;
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
	if (!addr_eq(k.saddr, p->daddr))
		return false;
	if (scope != CT_SCOPE_INGRESS && !addr_eq(k.daddr, p->saddr))
		return false;
	if (bpf_skb_load_bytes(skb, l4, ports, 8) < 0)
		return false;
	if (k.proto == IPPROTO_ICMP || k.proto == IPPROTO_ICMPV6) {
		__builtin_memcpy(&k.sport, ports + 4, 2);
		__builtin_memcpy(&k.dport, ports + 4, 2);
	} else {
		__builtin_memcpy(&k.sport, ports, 2);
		__builtin_memcpy(&k.dport, ports + 2, 2);
	}
	/* The error's receiver sent the quoted packet: as the flow's initiator (the quoted tuple is the
	 * entry's, at the receiver's side of the flow) or as its responder (the reversed tuple is). */
	k.scope = ct_reverse_scope(scope);
	if (ct_live_for(bpf_map_lookup_elem(&conntrack, &k), local ? peer : self, local ? self : 0, k.proto, now))
		return true;
	__builtin_memset(&r, 0, sizeof(r));
	r.family = k.family;
	r.proto = k.proto;
	r.scope = scope;
	r.sport = k.dport;
	r.dport = k.sport;
	__builtin_memcpy(r.saddr, k.daddr, 16);
	__builtin_memcpy(r.daddr, k.saddr, 16);
	return ct_live_for(bpf_map_lookup_elem(&conntrack, &r), self, peer, k.proto, now);
}

/* Is e the live entry a reply at (scope, self, peer) belongs to? The mirror image of ct_lookup's
 * forward test. */
static __always_inline bool ct_reply_of(const struct ct_entry *e, const struct pkt *p, __u8 scope, __u32 self, __u32 peer,
					bool syn, __u64 now)
{
	return e && e->endpoint_id == (scope == CT_SCOPE_LOCAL ? peer : self) &&
	       e->peer_endpoint_id == (scope == CT_SCOPE_LOCAL ? self : 0) && !ct_expired(e, p->proto, now) &&
	       !(syn && e->state >= CT_STATE_CLOSING);
}

/* The reply-first probe (ct_lookup): the reverse key's entry when it is this point's, unrevoked and
 * not closing (its expiry is the caller's to check), else NULL; *k holds the reverse key. A
 * subprogram, not inlined: from_container inlines ct_lookup twice and its stack is near the limit. */
static __noinline struct ct_entry *ct_reply_probe(const struct pkt *p, __u8 scope, __u32 self, __u32 peer, struct ct_key *k)
{
	struct ct_entry *e;

	ct_key_of(k, p, ct_reverse_scope(scope), true);
	e = bpf_map_lookup_elem(&conntrack, k);
	if (!e || e->endpoint_id != (scope == CT_SCOPE_LOCAL ? peer : self) ||
	    e->peer_endpoint_id != (scope == CT_SCOPE_LOCAL ? self : 0) || (e->flags & CT_F_REVOKED) ||
	    e->state >= CT_STATE_CLOSING)
		return NULL;
	return e;
}

/* The probe's entry when the packet is its reply as it stands (live, from the peer identity it recorded). */
static __always_inline struct ct_entry *ct_reply_taken(const struct pkt *p, __u8 scope, __u32 self, __u32 peer,
						     __u32 peer_id, struct ct_key *k, __u64 now)
{
	struct ct_entry *e = ct_reply_probe(p, scope, self, peer, k);

	if (e && !ct_expired(e, p->proto, now) && (!peer_id || ct_peer_identity(e, ct_reverse_scope(scope)) == peer_id))
		return e;
	return NULL;
}

/* Established, reply, related, revoked, peer changed or new. *out is the entry found (established,
 * reply, revoked, peer changed), *k its key; *done says the connection just finished (see ct_update).
 * peer_id: the identity the packet itself carries (a tunnel's VNI), 0 = none. An entry that recorded
 * another peer identity is not this packet's flow as it was admitted (a pod on another node took a
 * deleted pod's address and sends on its tuples; a relabeled pod): CT_PEER_CHANGED(_REPLY), and the
 * entry is left as it was (no counters, no TCP state: a forged RST closes nothing). One compare.
 *
 * The forward key decides before the reverse one. Half of all packets are replies, though, and
 * looking their forward key up first costs a hash-bucket walk that misses (on a line no cache holds:
 * ~a fifth of the datapath's extra CPU per connection in the overlay's profile). So a packet that
 * looks like a reply (ct_reply_likely) tries the reverse key first, and takes that entry when it is
 * live, unrevoked and not closing. Entries of both directions of one tuple at one point arise only
 * from tuple reuse past a closing (or expired, or another endpoint's) entry: a new flow's first packet
 * is checked against the reverse entry, and a live one that is not closing makes it a reply instead
 * of a new flow. So a live reverse entry that is not closing has no forward companion made after it.
 * One made before it can exist: the reverse flow was opened by a SYN while the forward one was
 * closing (a SYN is no reply of a closing entry). A reply-likely packet then counts as the newer,
 * open flow's reply, where the forward-first order would give it to the closing flow: both entries
 * were admitted at this point and stay charged to their openers, so only which one the packet updates
 * (or a RST deletes) differs, the open flow is the likelier one (the bpf-fuzz model does the same,
 * FUZZ_SEED=248404394), and whether a packet of a proxied forward flow goes to the proxy; a forward
 * entry that is revoked or holds another peer identity yields to that reply in either order, so the
 * guess never decides a verdict (bpf-ct-hint.test.ts). Anything else takes the full order below. */
static __always_inline int ct_lookup(struct __sk_buff *skb, const struct pkt *p, __u8 scope, __u32 self, __u32 peer,
				     __u32 peer_id, struct ct_entry **out, struct ct_key *k, bool *done)
{
	struct ct_entry *e;
	__u64 now = ct_now();
	bool syn = tcp_syn_only(p), likely = ct_reply_likely(p), revoked, changed;

	/* Another peer identity takes the full order below (a forward entry may hold this sender's). */
	if (likely && (e = ct_reply_taken(p, scope, self, peer, peer_id, k, now)))
		goto reply;
	ct_key_of(k, p, scope, false);
	e = bpf_map_lookup_elem(&conntrack, k);
	/* A SYN on an entry that is not a fresh, same-ISN attempt is a new connection (tuple reuse). */
	if (e && e->endpoint_id == self && e->peer_endpoint_id == peer && !ct_expired(e, p->proto, now) &&
	    !(syn && (e->state != CT_STATE_NEW || e->tcp_isn != p->seq))) {
		revoked = e->flags & CT_F_REVOKED;
		changed = peer_id && ct_peer_identity(e, scope) != peer_id;
		/* Not passed as it is: the reply the probe takes goes first, whatever the guess (see above). */
		if ((revoked || changed) && !likely) {
			struct ct_entry *r = ct_reply_taken(p, scope, self, peer, peer_id, k, now);

			if (r) {
				e = r;
				goto reply;
			}
			ct_key_of(k, p, scope, false);
		}
		*out = e;
		if (revoked) {
			e->last_seen_ns = now; /* the revocation lasts while the flow keeps trying */
			return CT_REVOKED_FORWARD;
		}
		if (changed)
			return CT_PEER_CHANGED;
		*done = ct_update(e, p, CT_DIR_FORWARD, now);
		return CT_ESTABLISHED;
	}
	ct_key_of(k, p, ct_reverse_scope(scope), true);
	e = bpf_map_lookup_elem(&conntrack, k);
	if (ct_reply_of(e, p, scope, self, peer, syn, now)) {
reply:
		*out = e;
		if (e->flags & CT_F_REVOKED) {
			e->last_seen_ns = now;
			return CT_REVOKED_REPLY;
		}
		if (peer_id && ct_peer_identity(e, ct_reverse_scope(scope)) != peer_id)
			return CT_PEER_CHANGED_REPLY;
		*done = ct_update(e, p, CT_DIR_REPLY, now);
		return CT_REPLY;
	}
	*out = NULL;
	if (p->icmp_error && ct_related(skb, p, scope, self, peer))
		return CT_RELATED;
	return CT_NEW;
}
