// SPDX-License-Identifier: GPL-2.0
/* Membrane per-endpoint tc datapath, attached to both hooks of every host-side veth:
 *   from_container: tc ingress of the host veth (packets the container sends) = the endpoint's egress
 *   to_container:   tc egress of the host veth (packets the host stack delivers) = its ingress
 * One loaded copy of each program serves every endpoint; the endpoint is found by skb->ifindex.
 *
 * Nothing leaves a container before anti-spoofing (lib/spoof.h) has checked its source MAC and
 * address. Every IP packet passes conntrack and, when it starts a new flow, the endpoint's policy
 * (lib/enforce.h); what cannot be classified is dropped (lib/parse.h). Pod-to-pod traffic on this node is short-cut: from_container looks the destination
 * up in local_endpoints, applies the destination's ingress policy too (the redirect skips the
 * destination's to_container hook), does what a router would (TTL/hop-limit decrement, L2 rewrite) and
 * hands the packet straight to the destination container's eth0 with bpf_redirect_peer. That skips
 * the host forwarding path and is what beats plain veth routing in the measurements. Everything else
 * goes up the host stack unchanged. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/counters.h"
#include "lib/enforce.h"
#include "lib/spoof.h"
#include "lib/overlay.h"
#include "lib/dns_cache.h"

#define MBR_MARK_LOCAL_REDIRECT 0x0d00 /* MBR_REDIRECT_EGRESS measurement builds only */

/* Rewrite L2 like a router would: from the destination's host veth to the destination container.
 * Needed for pkt_type on kernels before 6.15 and so the container sees sane MACs. Written in place
 * (the headers are linear: route_hop, just before, made sure), not with bpf_skb_store_bytes: one
 * helper call less per delivered packet. */
static __always_inline int rewrite_l2(struct __sk_buff *skb, const struct local_endpoint *dst)
{
	void *data, *data_end;

	if (!linear_headers(skb, ETH_HLEN, &data, &data_end))
		return -1;
	__builtin_memcpy(data, dst->container_mac, ETH_ALEN);
	__builtin_memcpy(data + ETH_ALEN, dst->host_mac, ETH_ALEN);
	return 0;
}

static __always_inline int deliver_to_local(struct __sk_buff *skb, const struct local_endpoint *dst)
{
	if (rewrite_l2(skb, dst) < 0)
		return TC_ACT_OK; /* let the stack route it rather than drop */
	count_endpoint_rx(dst->endpoint_id, skb->len);
#ifdef MBR_REDIRECT_EGRESS /* measurement builds only: through the host veth's egress and the peer's backlog */
	skb->mark = MBR_MARK_LOCAL_REDIRECT;
	return bpf_redirect(dst->host_ifindex, 0);
#endif
	/* Only valid from tc ingress, which is where from_container runs. */
	return bpf_redirect_peer(dst->host_ifindex, 0);
}

/* A router's hop (TTL / hop limit, fib.h), then into the local destination. */
static __always_inline int forward_local(struct __sk_buff *skb, const struct pkt *p, const struct local_endpoint *dst)
{
	if (route_hop(skb, p->family) < 0)
		return TC_ACT_OK;
	return deliver_to_local(skb, dst);
}

/* A flow for the L7 proxy, from the pod (tc ingress): handed to it here (proxy.h). */
static __always_inline int to_proxy(struct __sk_buff *skb, const struct pkt *p, const struct endpoint_config *src, __u16 port)
{
	__u16 reason;
	int verdict;

	/* A DNS query the proxy has answered before (dns_cache.h): answered here. */
	if (dns_cache_answer(skb, p, src, &verdict))
		return verdict;
	reason = proxy_assign(skb, p, port);

	if (!reason)
		return TC_ACT_OK;
	drop_at(p, src, POLICY_DIR_EGRESS, reason);
	return TC_ACT_SHOT;
}

/* A packet from another node for a local pod (from_tunnel, from_underlay's two paths): the pod's
 * ingress with `peer` as the sender's identity (0: the source address's, `lookup_src`), then to the
 * L7 proxy or into the pod. `to_host`: the frame was addressed to another device (the tunnel's inner
 * frame) and the stack must take it as its own when the proxy gets it. `hairpin`: a flow for the
 * proxy reaches the stack through the host device (proxy_hairpin, as to_container's flows from outside
 * the node's pods), not from the device it arrived on: vxlan_rx.c's packet arrived on the underlay
 * device, while the remote pod's address is routed via the tunnel device, so a strict rp_filter
 * would drop it there; the host device's is loose (shared/src/l7/routing.ts). */
static __always_inline int remote_ingress(struct __sk_buff *skb, const struct pkt *p, const struct endpoint_config *ep,
					  const struct local_endpoint *dst, __u32 peer, bool lookup_src, bool to_host,
					  bool hairpin)
{
	__u16 reason = 0, proxy = 0;
	int r;

	if (enforce_peer(skb, p, ep, POLICY_DIR_INGRESS, true, peer, lookup_src, &proxy) != ENFORCE_PASS)
		return TC_ACT_SHOT;
	if (proxy && hairpin) {
		r = proxy_hairpin(skb, p, proxy, &reason);
		if (r == TC_ACT_SHOT)
			drop_at(p, ep, POLICY_DIR_INGRESS, reason);
		return r;
	}
	if (proxy) {
		reason = proxy_assign(skb, p, proxy);
		if (reason) {
			drop_at(p, ep, POLICY_DIR_INGRESS, reason);
			return TC_ACT_SHOT;
		}
		if (to_host)
			bpf_skb_change_type(skb, PACKET_HOST);
		return TC_ACT_OK;
	}
	/* Larger than the pod's MTU (a jumbo underlay, a pod given a smaller MTU): the stack forwards it
	 * into the pod's host veth as a router does (fragments, ICMP "need to frag" or "packet too big"),
	 * where to_container finds the flow admitted here. */
	if (!fits_mtu(skb, dst->host_ifindex, ETH_HLEN, p->len - ETH_HLEN, p->l4_off, p->proto)) {
		if (to_host)
			bpf_skb_change_type(skb, PACKET_HOST);
		return TC_ACT_OK;
	}
	return forward_local(skb, p, dst);
}

/* A drop before any endpoint is known: counted, not reported (an event names an endpoint). */
static __always_inline int drop_unknown(struct __sk_buff *skb, __u32 reason)
{
	count_drop(reason, skb->len);
	return TC_ACT_SHOT;
}

static __always_inline int from_container_verdict(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint_config *src, *dst_cfg;
	struct local_endpoint *dst;
	struct ip_key key;
	struct pkt p;
	__u16 spoofed, proxy = 0;
	int r;

	src = bpf_map_lookup_elem(&endpoints_cfg, &ifindex);
	if (!src)
		return drop_unknown(skb, DROP_NO_CONFIG); /* fail closed: nobody to check it against */
	count_endpoint_tx(src->endpoint_id, skb->len);
	spoofed = check_source(skb, src, &p);
	if (spoofed)
		{
		drop_at(&p, src, POLICY_DIR_EGRESS, spoofed);
		return TC_ACT_SHOT;
	}
	r = parse_packet(skb, &p);
	if (r == PARSE_OTHER)
		return TC_ACT_OK; /* ARP (checked above): the host answers (proxy_arp) */
	if (r == PARSE_DROP) {
		drop_at(&p, src, POLICY_DIR_EGRESS, p.drop_reason);
		return TC_ACT_SHOT;
	}

	/* Built field by field: an initialiser would become a .rodata map the loader must manage. */
	__builtin_memset(&key, 0, sizeof(key));
	key.family = p.family;
	__builtin_memcpy(key.addr, p.daddr, 16);
	dst = bpf_map_lookup_elem(&local_endpoints, &key);
	/* To itself, or expiring (the stack drops it and sends ICMP time exceeded): no short-cut. */
	if (!dst || dst->host_ifindex == ifindex || p.hop_limit <= 1) {
		if (enforce(skb, &p, src, POLICY_DIR_EGRESS, false, &proxy) != ENFORCE_PASS)
			return TC_ACT_SHOT;
		/* Elsewhere: another node's pod through the tunnel (overlay.h), the rest up the host stack. */
		return proxy ? to_proxy(skb, &p, src, proxy) : to_overlay(skb, &p, src);
	}
	/* The redirect skips the destination's to_container: apply its ingress policy here, together with
	 * the sender's egress (one conntrack entry for both). */
	dst_cfg = bpf_map_lookup_elem(&endpoints_cfg, &dst->host_ifindex);
	if (!dst_cfg)
		return drop_unknown(skb, DROP_NO_CONFIG);
	if (enforce_local(skb, &p, src, dst_cfg, &proxy) != ENFORCE_PASS)
		return TC_ACT_SHOT;
	if (proxy)
		return to_proxy(skb, &p, src, proxy);
	return forward_local(skb, &p, dst);
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	return tcx_final(from_container_verdict(skb), false);
}

static __always_inline int to_container_verdict(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint_config *ep;
	struct pkt p;
	__u16 proxy = 0, reason = 0;
	int r;

	ep = bpf_map_lookup_elem(&endpoints_cfg, &ifindex);
	if (!ep)
		return drop_unknown(skb, DROP_NO_CONFIG);
#ifdef MBR_REDIRECT_EGRESS
	if (skb->mark == MBR_MARK_LOCAL_REDIRECT) { /* decided in from_container */
		skb->mark = 0;
		return TC_ACT_OK;
	}
#endif
	r = parse_packet(skb, &p);
	if (r == PARSE_DROP) {
		drop_at(&p, ep, POLICY_DIR_INGRESS, p.drop_reason);
		return TC_ACT_SHOT;
	}
	if (r == PARSE_IP && enforce(skb, &p, ep, POLICY_DIR_INGRESS, false, &proxy) != ENFORCE_PASS)
		return TC_ACT_SHOT;
	if (proxy) {
		/* From outside this node's pods (world, host, other nodes): back up to the stack, to the proxy. */
		r = proxy_hairpin(skb, &p, proxy, &reason);
		if (r == TC_ACT_SHOT)
			drop_at(&p, ep, POLICY_DIR_INGRESS, reason);
		return r;
	}
	count_endpoint_rx(ep->endpoint_id, skb->len);
	return TC_ACT_OK;
}

SEC("tc")
int to_container(struct __sk_buff *skb)
{
	return tcx_final(to_container_verdict(skb), false);
}

/* tc ingress of the host device: packets to_container hairpinned for the L7 proxy (proxy.h), marked
 * with its port. Nothing else is sent into this device. */
static __always_inline int from_host_device_verdict(struct __sk_buff *skb)
{
	__u32 mark = skb->mark;
	__u16 reason;
	struct pkt p;

	if ((mark & MARK_MAGIC_MASK) != MARK_TO_PROXY)
		return TC_ACT_OK;
	if (parse_packet(skb, &p) != PARSE_IP)
		return drop_unknown(skb, DROP_PROXY_SET_FAILED);
	reason = proxy_assign(skb, &p, mark >> 16);
	return reason ? drop_unknown(skb, reason) : TC_ACT_OK;
}

SEC("tc")
int from_host_device(struct __sk_buff *skb)
{
	return tcx_final(from_host_device_verdict(skb), false);
}

/* The L7 proxy's netns socket lookup (proxy.h; shared/src/l7/datapath.ts attaches it). */
SEC("sk_lookup")
int proxy_steer(struct bpf_sk_lookup *ctx)
{
	return proxy_steer_lookup(ctx);
}

/* The tunnel device's programs (overlay mode) and the underlay device's (native routing) share the
 * helpers above. */
#include "tunnel.c"
#include "vxlan_rx.c"
#include "underlay.c"

char LICENSE[] SEC("license") = "GPL";
