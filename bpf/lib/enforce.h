/* SPDX-License-Identifier: GPL-2.0 */
/* One enforcement point: the endpoint `ep` in direction `dir` (its egress for packets it sends, its
 * ingress for packets towards it). Conntrack first: established flows, replies and related ICMP pass
 * without a policy lookup; only a new flow is looked up (lookup.h), admitted (conntrack entry +
 * FLOW_NEW event) or dropped (drop counter + DROP event). Audit mode (per endpoint or agent-wide)
 * admits a would-be drop and reports it with verdict AUDIT. */
#pragma once

#include "counters.h"
#include "ct.h"
#include "events.h"
#include "lookup.h"

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

/* The policy decision for a flow's first packet at one enforcement point. Fills *m for the FLOW_NEW
 * event; a drop is counted and reported here. Audit mode turns a would-be drop into a pass. */
static __always_inline int decide(const struct pkt *p, const struct endpoint_config *ep, __u8 dir, __u32 peer, bool redirect,
				  struct event_meta *m)
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
		pe = policy_lookup(ep->endpoint_id, peer, dir, p->proto, policy_dport(p));
		if (pe) {
			action = pe->action;
			m->rule_id = pe->rule_id;
			__sync_fetch_and_add(&pe->packets, 1);
			__sync_fetch_and_add(&pe->bytes, p->len);
		} else if (ep->flags & deny_bit) {
			action = POLICY_ACTION_DENY;
		}
	}
	m->verdict = redirect ? TRACE_VERDICT_REDIRECTED : TRACE_VERDICT_FORWARDED;
	if (action != POLICY_ACTION_DENY)
		return ENFORCE_PASS;
	cfg = global_config();
	if (!(ep->flags & EP_F_AUDIT) && !(cfg && (cfg->flags & CFG_F_AUDIT))) {
		count_drop(DROP_REASON_POLICY_DENIED, p->len);
		m->type = TRACE_DROP;
		m->reason = DROP_REASON_POLICY_DENIED;
		m->verdict = TRACE_VERDICT_DROPPED;
		emit_event(p, m, ep, NULL);
		return ENFORCE_DROP;
	}
	m->verdict = TRACE_VERDICT_AUDIT;
	m->flags = TRACE_F_AUDIT;
	return ENFORCE_PASS;
}

static __always_inline int new_flow(const struct pkt *p, const struct endpoint_config *ep, __u8 dir, __u32 peer_hint, bool redirect)
{
	struct event_meta m;
	__u32 peer = peer_hint ? peer_hint : ipcache_identity(p->family, dir == POLICY_DIR_EGRESS ? p->daddr : p->saddr);

	if (decide(p, ep, dir, peer, redirect, &m) != ENFORCE_PASS)
		return ENFORCE_DROP;
	ct_create(p, dir, m.src_identity, m.dst_identity, m.rule_id, 0,
		  (redirect ? CT_F_REDIRECTED : 0) | (m.flags & TRACE_F_AUDIT ? CT_F_AUDIT : 0), ep);
	emit_event(p, &m, ep, NULL);
	return ENFORCE_PASS;
}

/* A FIN or RST closed a tracked flow: report it at enforcement point (ep, dir), with its totals. */
static __always_inline void report_end(const struct pkt *p, const struct ct_entry *ct, const struct endpoint_config *ep, __u8 dir,
				       bool reply, __u32 rule_id)
{
	struct event_meta m;

	__builtin_memset(&m, 0, sizeof(m));
	m.type = TRACE_FLOW_END;
	m.direction = dir;
	m.reversed = reply;
	m.src_identity = ct->src_identity;
	m.dst_identity = ct->dst_identity;
	m.rule_id = rule_id;
	m.verdict = ct->flags & CT_F_AUDIT ? TRACE_VERDICT_AUDIT : ct->flags & CT_F_REDIRECTED ? TRACE_VERDICT_REDIRECTED : TRACE_VERDICT_FORWARDED;
	m.flags = ct->flags & CT_F_AUDIT ? TRACE_F_AUDIT : 0;
	emit_event(p, &m, ep, ct);
}

static __always_inline bool end_due(struct ct_entry *ct)
{
	if (ct->state < CT_STATE_CLOSING || (ct->flags & CT_F_END_REPORTED))
		return false;
	ct->flags |= CT_F_END_REPORTED;
	return true;
}

/* peer_hint: the peer's identity when known without the ipcache (a local sending endpoint), else 0. */
static __always_inline int enforce(struct __sk_buff *skb, const struct pkt *p, const struct endpoint_config *ep, __u8 dir,
				   __u32 peer_hint, bool redirect)
{
	struct ct_entry *ct = NULL;
	struct ct_key key;
	bool done = false;
	int r;

#ifdef MBR_NO_ENFORCE /* measurement builds only: the datapath without conntrack and policy */
	return ENFORCE_PASS;
#endif
	if (is_icmp6_control(p))
		return ENFORCE_PASS;
	r = ct_lookup(skb, p, dir, &ct, &key, &done);
	if (r == CT_NEW)
		return new_flow(p, ep, dir, peer_hint, redirect);
	if (ct && p->proto == IPPROTO_TCP) {
		/* The flow's direction at the point that admitted it. */
		if (end_due(ct))
			report_end(p, ct, ep, r == CT_REPLY ? dir ^ 1 : dir, r == CT_REPLY, ct->rule_id);
		if (done)
			bpf_map_delete_elem(&conntrack, &key);
	}
	return ENFORCE_PASS;
}

/* Pod-to-pod through redirect_peer: the sender's egress and the receiver's ingress, decided together
 * and tracked by one CT_SCOPE_LOCAL entry. Both points still report their own FLOW_NEW / FLOW_END. */
static __always_inline int enforce_local(struct __sk_buff *skb, const struct pkt *p, const struct endpoint_config *src,
					 const struct endpoint_config *dst)
{
	struct ct_entry *ct = NULL;
	struct event_meta out, in;
	struct ct_key key;
	bool done = false;
	int r;

#ifdef MBR_NO_ENFORCE
	return ENFORCE_PASS;
#endif
	if (is_icmp6_control(p))
		return ENFORCE_PASS;
	r = ct_lookup(skb, p, CT_SCOPE_LOCAL, &ct, &key, &done);
	if (r != CT_NEW) {
		if (ct && p->proto == IPPROTO_TCP) {
			if (end_due(ct)) {
				/* Reported from the flow's own sender and receiver, whichever way this packet goes. */
				bool reply = r == CT_REPLY;
				report_end(p, ct, reply ? dst : src, POLICY_DIR_EGRESS, reply, ct->rule_id);
				report_end(p, ct, reply ? src : dst, POLICY_DIR_INGRESS, reply, ct->rule_id_ingress);
			}
			if (done)
				bpf_map_delete_elem(&conntrack, &key);
		}
		return ENFORCE_PASS;
	}
	if (decide(p, src, POLICY_DIR_EGRESS, dst->identity, true, &out) != ENFORCE_PASS)
		return ENFORCE_DROP;
	if (decide(p, dst, POLICY_DIR_INGRESS, src->identity, true, &in) != ENFORCE_PASS)
		return ENFORCE_DROP;
	ct_create(p, CT_SCOPE_LOCAL, src->identity, dst->identity, out.rule_id, in.rule_id,
		  CT_F_REDIRECTED | ((out.flags | in.flags) & TRACE_F_AUDIT ? CT_F_AUDIT : 0), src);
	emit_event(p, &out, src, NULL);
	emit_event(p, &in, dst, NULL);
	return ENFORCE_PASS;
}
