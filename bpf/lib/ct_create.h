/* SPDX-License-Identifier: GPL-2.0 */
/* Conntrack entries made: a flow policy admitted becomes an entry bound to its endpoint, within the
 * endpoint's share of the table (the lookups that later find it are in ct.h). */
#pragma once

#include "ct.h"

/* What a new entry records besides the tuple. */
struct ct_new {
	__u32 src_identity;
	__u32 dst_identity;
	__u32 rule_id;
	__u32 rule_id_ingress;
	__be16 policy_port;
	__u16 proxy_port; /* CT_F_PROXY */
	__u8 flags;
};

#define CT_UNTRACKED 1 /* ct_create: admitted, nothing tracked (a bare segment of no known flow) */

/* Tracks a flow that policy admitted, owned by `ep` (LOCAL: the sender; `peer_ep` the receiver).
 * 0, CT_UNTRACKED, or < 0 when it cannot be tracked (table full, owner over its share): the caller
 * drops the packet rather than admit a flow whose replies would then meet policy as new flows. */
static __always_inline int ct_create(const struct pkt *p, __u8 scope, const struct ct_new *n, const struct endpoint_config *ep,
				     const struct endpoint_config *peer_ep)
{
	struct ct_key k;
	struct ct_entry e;
	struct ct_entry *old;
	__u64 now = ct_now();
	__u32 owner = ep->endpoint_id, old_owner;
	bool straggler;
	int err;

	ct_key_of(&k, p, scope, false);
	__builtin_memset(&e, 0, sizeof(e));
	e.created_ns = now;
	e.last_seen_ns = now;
	e.packets[0] = 1;
	e.bytes[0] = p->len;
	e.src_identity = n->src_identity;
	e.dst_identity = n->dst_identity;
	e.rule_id = n->rule_id;
	e.rule_id_ingress = n->rule_id_ingress;
	e.flags = n->flags;
	e.policy_port = n->policy_port;
	e.proxy_port = n->proxy_port;
	e.endpoint_id = owner;
	e.ifindex = ep->ifindex;
	if (peer_ep) {
		e.peer_endpoint_id = peer_ep->endpoint_id;
		e.peer_ifindex = peer_ep->ifindex;
	}
	e.tcp_flags_seen[0] = p->tcp_flags;
	e.state = CT_STATE_ESTABLISHED; /* non-TCP */
	if (tcp_syn_only(p)) {
		e.state = CT_STATE_NEW;
		e.tcp_isn = p->seq;
	} else if (p->proto == IPPROTO_TCP && !(p->tcp_flags & (TCP_RST | TCP_FIN))) {
		/* Picked up mid-stream (a later fragment, a flow whose entry expired, a revoked flow the
		 * policy admits again): established once the other side answers. */
		e.state = CT_STATE_NEW;
	} else if (p->proto == IPPROTO_TCP && (p->tcp_flags & TCP_RST)) {
		e.state = CT_STATE_CLOSED;
	} else if (p->proto == IPPROTO_TCP && (p->tcp_flags & TCP_FIN)) {
		e.state = CT_STATE_CLOSING;
		e.tcp_isn = p->seq; /* from the first FIN on: its sequence number (ct_update) */
	}
	/* A TCP segment that cannot open a connection and carries no data (a bare ACK, FIN or RST), or any
	 * RST: see below; it never makes an entry. */
	straggler = p->proto == IPPROTO_TCP && p->has_l4 && !p->later_fragment && !(p->tcp_flags & TCP_SYN) &&
		    (p->tcp_bare || (p->tcp_flags & TCP_RST));
	/* The common case first: a new tuple, inserted without looking for an old entry. */
	if (!straggler && !ct_over_share(owner)) {
		err = bpf_map_update_elem(&conntrack, &k, &e, BPF_NOEXIST);
		if (!err) {
			ct_count(owner, 1);
			ct_mark_server_port(p);
			return 0;
		}
		if (err != -17 /* EEXIST: an old entry of the tuple, below */)
			return err;
	}
	/* A dead, unbound or revoked entry of the same tuple is replaced in place: the owner's own (tuple
	 * reuse: a client's next connection from a port whose last one is still closing) costs its share
	 * nothing, so it is not asked about. */
	old = bpf_map_lookup_elem(&conntrack, &k);
	if (old) {
		old_owner = old->endpoint_id;
		if (old_owner != owner && ct_over_share(owner))
			return -1;
		err = bpf_map_update_elem(&conntrack, &k, &e, BPF_EXIST);
		if (err == 0) {
			if (old_owner != owner) {
				ct_count(old_owner, -1);
				ct_count(owner, 1);
			}
			ct_mark_server_port(p);
			return 0;
		}
		if (err != -2 /* ENOENT: deleted since the lookup (the agent's GC, a RST): insert */)
			return err;
	}
	/* A TCP segment that cannot open a connection and carries no data (a bare ACK, FIN or RST), or any
	 * RST, of a flow with no entry is passed as the policy admitted it, but not tracked: it is the
	 * straggler of a connection whose entry its end already deleted (the second ACK of a simultaneous
	 * close, a retransmitted FIN, the RST answering it), and an entry made for it would hold a share
	 * slot for CT_LIFETIME_TCP_SYN (60 s) with nothing to follow. At thousands of connections per
	 * second those filled a client's share within seconds and starved its new connections. Nothing
	 * passes that did not before: every such segment meets the policy on its own, and its answer (if
	 * any) meets the policy as a new flow. A connection that resumes with data is tracked again. */
	if (straggler)
		return CT_UNTRACKED;
	if (ct_over_share(owner))
		return -1;
	err = bpf_map_update_elem(&conntrack, &k, &e, BPF_NOEXIST);
	if (err)
		return err;
	ct_count(owner, 1);
	ct_mark_server_port(p);
	return 0;
}
