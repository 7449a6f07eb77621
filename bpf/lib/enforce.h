/* SPDX-License-Identifier: GPL-2.0 */
/* One enforcement point: the endpoint `ep` in direction `dir` (its egress for packets it sends, its
 * ingress for packets towards it). Conntrack first: established flows, replies and related ICMP pass
 * without a policy lookup; only a new flow is looked up (lookup.h), admitted (conntrack entry +
 * FLOW_NEW event) or dropped (drop counter + DROP event). Audit mode (per endpoint or agent-wide)
 * admits a would-be drop and reports it with verdict AUDIT. Neighbour discovery and MLD skip policy
 * only while they stay on the endpoint's own link. */
#pragma once

#include "counters.h"
#include "ct.h"
#include "ct_create.h"
#include "events.h"
#include "lookup.h"
#include "proxy.h"

#define ENFORCE_PASS 0
#define ENFORCE_DROP 1

/* Policy port of a packet: the L4 destination port, or 0x100 | type for ICMP. */
static __always_inline __be16 policy_dport(const struct pkt *p)
{
	if (!p->has_l4)
		return 0;
	if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6)
		return bpf_htons(POLICY_ICMP_TYPE_FLAG | p->icmp_type);
	return p->dport;
}

/* Counts a drop and reports it as seen by `ep` (when known) in direction `dir`. */
static __always_inline int drop_packet(const struct pkt *p, const struct endpoint_config *ep, __u8 dir, __u16 reason,
				       __u32 src_identity, __u32 dst_identity, __u32 rule_id)
{
	struct event_meta m;

	count_drop(reason, p->len);
	if (!ep)
		return ENFORCE_DROP;
	__builtin_memset(&m, 0, sizeof(m));
	m.type = TRACE_DROP;
	m.reason = reason;
	m.verdict = TRACE_VERDICT_DROPPED;
	m.direction = dir;
	m.src_identity = src_identity;
	m.dst_identity = dst_identity;
	m.rule_id = rule_id;
	emit_event(p, &m, ep, NULL);
	return ENFORCE_DROP;
}

/* The endpoint's own identity on its side of the flow; 0 (unknown) for the other. */
static __always_inline int drop_at(const struct pkt *p, const struct endpoint_config *ep, __u8 dir, __u16 reason)
{
	return drop_packet(p, ep, dir, reason, dir == POLICY_DIR_EGRESS ? ep->identity : 0, dir == POLICY_DIR_EGRESS ? 0 : ep->identity, 0);
}

/* NDP and MLD pass without policy only on the endpoint's own link: with the host veth (hop limit 255
 * for NDP, which no router forwards; a link-local source for MLD, which no router forwards either),
 * to link-scoped destinations or the endpoint's gateway. Never between pods, and a pod is no router:
 * no router advertisements or redirects from it. */
static __always_inline bool icmp6_on_own_link(const struct pkt *p, const struct endpoint_config *ep, __u8 dir)
{
	bool ndp = is_icmp6_ndp(p);

	if (dir == POLICY_DIR_INGRESS)
		return ndp ? p->hop_limit == 255 : (ipv6_link_local(p->saddr) || ipv6_unspecified(p->saddr));
	if (ndp)
		return p->icmp_type != 134 && p->icmp_type != 137 && p->hop_limit == 255 &&
		       (ipv6_link_scoped(p->daddr) || addr_eq(p->daddr, ep->gateway6));
	return (ipv6_link_local(p->saddr) || ipv6_unspecified(p->saddr)) && ipv6_link_scoped(p->daddr);
}

/* The policy's answer for a flow at one enforcement point, asked about `port` (policy_dport of its
 * first packet). Fills *m for the FLOW_NEW event; a drop is neither counted nor reported here. Audit
 * mode turns a would-be drop into a pass. */
static __always_inline int policy_verdict(const struct pkt *p, const struct endpoint_config *ep, __u8 dir, __u32 peer,
					  __be16 port, bool redirect, struct event_meta *m)
{
	__u32 lookup_bit = dir == POLICY_DIR_INGRESS ? EP_F_INGRESS_LOOKUP : EP_F_EGRESS_LOOKUP;
	__u32 deny_bit = dir == POLICY_DIR_INGRESS ? EP_F_INGRESS_DEFAULT_DENY : EP_F_EGRESS_DEFAULT_DENY;
	const struct datapath_config *cfg;
	struct policy_entry *pe;
	__u8 action = POLICY_ACTION_ALLOW;

	__builtin_memset(m, 0, sizeof(*m));
	m->type = TRACE_FLOW_NEW;
	m->direction = dir;
	m->src_identity = dir == POLICY_DIR_EGRESS ? ep->identity : peer;
	m->dst_identity = dir == POLICY_DIR_EGRESS ? peer : ep->identity;
	if (ep->flags & lookup_bit) {
		pe = policy_lookup(ep->endpoint_id, peer, dir, p->proto, port);
		if (pe) {
			action = pe->action;
			m->rule_id = pe->rule_id;
			m->proxy_port = proxy_port_of(pe, dir, peer);
			if (m->proxy_port)
				m->flags |= TRACE_F_PROXY;
#ifndef MBR_NO_POLICY_STATS /* measurement builds only */
			__sync_fetch_and_add(&pe->packets, 1);
			__sync_fetch_and_add(&pe->bytes, p->len);
#endif
		} else if (ep->flags & deny_bit) {
			action = POLICY_ACTION_DENY;
		}
	}
	m->verdict = redirect ? TRACE_VERDICT_REDIRECTED : TRACE_VERDICT_FORWARDED;
	if (action != POLICY_ACTION_DENY)
		return ENFORCE_PASS;
	cfg = global_config();
	if (!(ep->flags & EP_F_AUDIT) && !(cfg && (cfg->flags & CFG_F_AUDIT)))
		return ENFORCE_DROP;
	m->verdict = TRACE_VERDICT_AUDIT;
	m->flags = TRACE_F_AUDIT;
	return ENFORCE_PASS;
}

/* The policy decision for a flow's first packet at one enforcement point. Fills *m for the FLOW_NEW
 * event; a drop is counted and reported here. */
static __always_inline int decide(const struct pkt *p, const struct endpoint_config *ep, __u8 dir, __u32 peer, bool redirect,
				  struct event_meta *m)
{
	if (policy_verdict(p, ep, dir, peer, policy_dport(p), redirect, m) == ENFORCE_PASS)
		return ENFORCE_PASS;
	return drop_packet(p, ep, dir, DROP_POLICY_DENIED, m->src_identity, m->dst_identity, m->rule_id);
}

/* A source the node itself vouches for, arriving from the underlay (native routing, underlay.c): one
 * of its own addresses (identity host) or of its pods. Neither ever legitimately comes from there. */
static __always_inline bool underlay_spoofed(const struct pkt *p, __u32 peer)
{
	struct ip_key src;

	if (peer == IDENTITY_HOST)
		return true;
	__builtin_memset(&src, 0, sizeof(src));
	src.family = p->family;
	__builtin_memcpy(src.addr, p->saddr, 16);
	return bpf_map_lookup_elem(&local_endpoints, &src) != NULL;
}

/* *proxy_port: set when the flow goes to the L7 proxy (its first packet included). peer: the other
 * side's identity when the caller knows it better than the packet's address does (a tunnel packet's
 * VNI), recorded with CT_F_TUNNEL; 0 = the ipcache's identity of the address. underlay: the packet
 * came in from the underlay (underlay_spoofed). */
static __always_inline int new_flow(const struct pkt *p, const struct endpoint_config *ep, __u8 dir, bool redirect, __u32 peer,
				    bool underlay, __u16 *proxy_port)
{
	struct event_meta m;
	struct ct_new n;
	__u8 tunnel = peer ? CT_F_TUNNEL : 0;

	if (!peer) {
		peer = ipcache_identity(p->family, dir == POLICY_DIR_EGRESS ? p->daddr : p->saddr);
		if (underlay && underlay_spoofed(p, peer))
			return drop_packet(p, ep, dir, DROP_SOURCE_SPOOFED, peer, ep->identity, 0);
	}

	if (decide(p, ep, dir, peer, redirect, &m) != ENFORCE_PASS)
		return ENFORCE_DROP;
	n.src_identity = m.src_identity;
	n.dst_identity = m.dst_identity;
	n.rule_id = m.rule_id;
	n.rule_id_ingress = 0;
	n.policy_port = policy_dport(p);
	n.proxy_port = m.proxy_port;
	n.flags = (redirect ? CT_F_REDIRECTED : 0) | (m.flags & TRACE_F_AUDIT ? CT_F_AUDIT : 0) | (m.proxy_port ? CT_F_PROXY : 0) | tunnel;
	if (ct_create(p, dir, &n, ep, NULL) < 0)
		return drop_packet(p, ep, dir, DROP_CT_INSERT_FAILED, m.src_identity, m.dst_identity, m.rule_id);
	emit_event(p, &m, ep, NULL);
	*proxy_port = m.proxy_port;
	return ENFORCE_PASS;
}

/* The FLOW_END event of a tracked flow that a FIN or RST closed, at enforcement point dir. */
static __always_inline void end_meta(struct event_meta *m, const struct ct_entry *ct, __u8 dir, bool reply, __u32 rule_id)
{
	__builtin_memset(m, 0, sizeof(*m));
	m->type = TRACE_FLOW_END;
	m->direction = dir;
	m->reversed = reply;
	m->src_identity = ct->src_identity;
	m->dst_identity = ct->dst_identity;
	m->rule_id = rule_id;
	m->verdict = ct->flags & CT_F_AUDIT ? TRACE_VERDICT_AUDIT : ct->flags & CT_F_REDIRECTED ? TRACE_VERDICT_REDIRECTED : TRACE_VERDICT_FORWARDED;
	m->flags = ct->flags & CT_F_AUDIT ? TRACE_F_AUDIT : 0;
}

/* A FIN or RST closed a tracked flow: report it at enforcement point (ep, dir), with its totals. */
static __always_inline void report_end(const struct pkt *p, const struct ct_entry *ct, const struct endpoint_config *ep, __u8 dir,
				       bool reply, __u32 rule_id)
{
	struct event_meta m;

	end_meta(&m, ct, dir, reply, rule_id);
	emit_event(p, &m, ep, ct);
}

static __always_inline bool end_due(struct ct_entry *ct)
{
	if (ct->state < CT_STATE_CLOSING || (ct->flags & CT_F_END_REPORTED))
		return false;
	ct->flags |= CT_F_END_REPORTED;
	return true;
}

/* The reply side of a flow the agent revoked: dropped as the policy would drop it. */
static __always_inline int drop_revoked(const struct pkt *p, const struct ct_entry *ct, const struct endpoint_config *ep, __u8 dir)
{
	return drop_packet(p, ep, dir, DROP_POLICY_DENIED, ct->dst_identity, ct->src_identity, 0);
}

/* A tunnel packet of a tracked flow whose VNI is another identity than the one the entry recorded
 * (CT_PEER_CHANGED: a pod on another node holds a deleted pod's address and sends on its tuples
 * before this node learns the new ipcache entry, or the sender was relabeled). The flow is asked again
 * where it was admitted (this endpoint, in the flow's direction, about the entry's policy port) with
 * the identity the packet carries, as if it began now. Denied: dropped (POLICY_DENIED, naming that
 * identity), the entry untouched, so the old sender's packets still pass. Admitted (as a new flow of
 * that sender would be, and through the same proxy or none): the entry takes the new identity and
 * rule (a FLOW_NEW says so), and the flow goes on. `reply`: the packet is a reply of the entry. */
static __always_inline int readmit(const struct pkt *p, struct ct_entry *ct, const struct endpoint_config *ep, __u8 dir,
				   __u32 peer, bool reply)
{
	__u8 fdir = reply ? dir ^ 1 : dir;
	struct event_meta m;

	if (policy_verdict(p, ep, fdir, peer, ct->policy_port, false, &m) != ENFORCE_PASS ||
	    m.proxy_port != (ct->flags & CT_F_PROXY ? ct->proxy_port : 0))
		return drop_packet(p, ep, dir, DROP_POLICY_DENIED, dir == POLICY_DIR_INGRESS ? peer : ep->identity,
				   dir == POLICY_DIR_INGRESS ? ep->identity : peer, m.rule_id);
	if (fdir == POLICY_DIR_INGRESS)
		ct->src_identity = peer;
	else
		ct->dst_identity = peer;
	ct->rule_id = m.rule_id;
	m.reversed = reply;
	if (ct->flags & CT_F_REDIRECTED)
		m.verdict = TRACE_VERDICT_REDIRECTED;
	emit_event(p, &m, ep, NULL);
	return ENFORCE_PASS;
}

/* *proxy_port: set when the packet is a forward packet of a flow that goes to the L7 proxy. peer and
 * underlay: see new_flow (peer 0 = the ipcache decides); a peer is also held to the identity each
 * conntrack entry recorded (readmit). */
static __always_inline int enforce_peer(struct __sk_buff *skb, const struct pkt *p, const struct endpoint_config *ep, __u8 dir,
					bool redirect, __u32 peer, bool underlay, __u16 *proxy_port)
{
	struct ct_entry *ct = NULL;
	struct ct_key key;
	bool done = false;
	int r;

#ifdef MBR_NO_ENFORCE /* measurement builds only: the datapath without conntrack and policy */
	return ENFORCE_PASS;
#endif
	if (is_icmp6_ndp(p) || is_icmp6_mld(p))
		return icmp6_on_own_link(p, ep, dir) ? ENFORCE_PASS : drop_at(p, ep, dir, DROP_FORBIDDEN_ICMPV6);
	r = ct_lookup(skb, p, dir, ep->endpoint_id, 0, peer, &ct, &key, &done);
	if (r == CT_NEW || r == CT_REVOKED_FORWARD)
		return new_flow(p, ep, dir, redirect, peer, underlay, proxy_port);
	if (r == CT_REVOKED_REPLY && ct)
		return drop_revoked(p, ct, ep, dir);
	if (peer && (r == CT_PEER_CHANGED || r == CT_PEER_CHANGED_REPLY)) { /* peer: compiled out elsewhere */
		if (!ct || readmit(p, ct, ep, dir, peer, r == CT_PEER_CHANGED_REPLY) != ENFORCE_PASS)
			return ENFORCE_DROP;
		r = r == CT_PEER_CHANGED ? CT_ESTABLISHED : CT_REPLY;
		done = ct_update(ct, p, r == CT_REPLY ? CT_DIR_REPLY : CT_DIR_FORWARD, ct_now());
	}
	/* From the underlay, a packet of a flow with this node's host (as the entry recorded the peer when
	 * the flow began) is forged: no lookup per packet, the entry is at hand. */
	if (underlay && ct && (r == CT_ESTABLISHED ? ct->src_identity : ct->dst_identity) == IDENTITY_HOST)
		return drop_packet(p, ep, dir, DROP_SOURCE_SPOOFED, IDENTITY_HOST, ep->identity, 0);
	/* The proxy answers the client as the destination: replies come from it, only forward packets go to it. */
	if (r == CT_ESTABLISHED && ct && (ct->flags & CT_F_PROXY))
		*proxy_port = ct->proxy_port;
	if (ct && p->proto == IPPROTO_TCP) {
		/* The flow's direction at the point that admitted it. */
		if (end_due(ct))
			report_end(p, ct, ep, r == CT_REPLY ? dir ^ 1 : dir, r == CT_REPLY, ct->rule_id);
		if (done)
			ct_delete(&key, ct->endpoint_id);
	}
	return ENFORCE_PASS;
}

static __always_inline int enforce(struct __sk_buff *skb, const struct pkt *p, const struct endpoint_config *ep, __u8 dir, bool redirect,
				   __u16 *proxy_port)
{
	return enforce_peer(skb, p, ep, dir, redirect, 0, false, proxy_port);
}

/* A pod-to-pod flow that goes to the L7 proxy is no redirect_peer flow: the sender talks to the
 * proxy through the stack, whose answers reach it at its own to_container. So it is tracked as the
 * sender's egress flow (with the receiver's ingress rule), which those answers are replies of. Its
 * later packets miss the LOCAL lookup and find it here. */
static __always_inline bool proxied_local_flow(const struct pkt *p, const struct endpoint_config *src, __u16 *proxy_port)
{
	__u64 now = ct_now();
	struct ct_entry *ct;
	struct ct_key key;
	bool done;

	/* Only this exact entry, and no side effect on any other: a plain egress entry of the same tuple
	 * (or a reply) is the LOCAL path's business. */
	ct_key_of(&key, p, CT_SCOPE_EGRESS, false);
	ct = bpf_map_lookup_elem(&conntrack, &key);
	if (!ct || !(ct->flags & CT_F_PROXY) || (ct->flags & CT_F_REVOKED) || ct->endpoint_id != src->endpoint_id ||
	    ct->peer_endpoint_id || ct_expired(ct, p->proto, now) ||
	    (tcp_syn_only(p) && (ct->state != CT_STATE_NEW || ct->tcp_isn != p->seq)))
		return false;
	done = ct_update(ct, p, CT_DIR_FORWARD, now);
	*proxy_port = ct->proxy_port;
	if (p->proto == IPPROTO_TCP) {
		if (end_due(ct))
			report_end(p, ct, src, POLICY_DIR_EGRESS, false, ct->rule_id);
		if (done)
			ct_delete(&key, ct->endpoint_id);
	}
	return true;
}

/* Pod-to-pod through redirect_peer: the sender's egress and the receiver's ingress, decided together
 * and tracked by one CT_SCOPE_LOCAL entry. Both points still report their own FLOW_NEW / FLOW_END, in
 * one ring record (emit_event_pair).
 * *proxy_port: set when either side sends the flow to the L7 proxy (no redirect then). */
static __always_inline int enforce_local(struct __sk_buff *skb, const struct pkt *p, const struct endpoint_config *src,
					 const struct endpoint_config *dst, __u16 *proxy_port)
{
	struct ct_entry *ct = NULL;
	struct event_meta out, in;
	struct ct_new n;
	struct ct_key key;
	bool done = false;
	int r;

#ifdef MBR_NO_ENFORCE
	return ENFORCE_PASS;
#endif
	if (is_icmp6_ndp(p) || is_icmp6_mld(p)) /* never between pods */
		return drop_at(p, src, POLICY_DIR_EGRESS, DROP_FORBIDDEN_ICMPV6);
	r = ct_lookup(skb, p, CT_SCOPE_LOCAL, src->endpoint_id, dst->endpoint_id, 0, &ct, &key, &done);
	if (r == CT_REVOKED_REPLY && ct)
		return drop_revoked(p, ct, src, POLICY_DIR_EGRESS);
	if (r != CT_NEW && r != CT_REVOKED_FORWARD) {
		if (ct && p->proto == IPPROTO_TCP) {
			if (end_due(ct)) {
				/* Reported from the flow's own sender and receiver, whichever way this packet goes. */
				bool reply = r == CT_REPLY;
				struct event_meta eout, ein;

				end_meta(&eout, ct, POLICY_DIR_EGRESS, reply, ct->rule_id);
				end_meta(&ein, ct, POLICY_DIR_INGRESS, reply, ct->rule_id_ingress);
				emit_event_pair(p, &eout, reply ? dst : src, &ein, reply ? src : dst, ct);
			}
			if (done)
				ct_delete(&key, ct->endpoint_id);
		}
		return ENFORCE_PASS;
	}
	if (proxied_local_flow(p, src, proxy_port))
		return ENFORCE_PASS;
	if (decide(p, src, POLICY_DIR_EGRESS, dst->identity, true, &out) != ENFORCE_PASS)
		return ENFORCE_DROP;
	if (decide(p, dst, POLICY_DIR_INGRESS, src->identity, true, &in) != ENFORCE_PASS)
		return ENFORCE_DROP;
	n.src_identity = src->identity;
	n.dst_identity = dst->identity;
	n.rule_id = out.rule_id;
	n.rule_id_ingress = in.rule_id;
	n.policy_port = policy_dport(p);
	n.proxy_port = out.proxy_port ? out.proxy_port : in.proxy_port;
	n.flags = ((out.flags | in.flags) & TRACE_F_AUDIT ? CT_F_AUDIT : 0);
	if (n.proxy_port) {
		n.flags |= CT_F_PROXY;
		out.verdict = in.verdict = TRACE_VERDICT_FORWARDED; /* through the proxy, not redirect_peer */
		if (ct_create(p, CT_SCOPE_EGRESS, &n, src, NULL) < 0)
			return drop_packet(p, src, POLICY_DIR_EGRESS, DROP_CT_INSERT_FAILED, src->identity, dst->identity, out.rule_id);
		emit_event_pair(p, &out, src, &in, dst, NULL);
		*proxy_port = n.proxy_port;
		return ENFORCE_PASS;
	}
	n.flags |= CT_F_REDIRECTED;
	if (ct_create(p, CT_SCOPE_LOCAL, &n, src, dst) < 0)
		return drop_packet(p, src, POLICY_DIR_EGRESS, DROP_CT_INSERT_FAILED, src->identity, dst->identity, out.rule_id);
	emit_event_pair(p, &out, src, &in, dst, NULL);
	return ENFORCE_PASS;
}
