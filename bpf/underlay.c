// SPDX-License-Identifier: GPL-2.0
/* Native routing's receive path (cluster mode, --routing-mode native; the send path is lib/fib.h). In
 * tunnel mode the same program is the overlay's receive short-cut instead (vxlan_rx.c).
 * Part of endpoint.o: endpoint.c includes this file after tunnel.c, so it shares the maps and the
 * delivery helpers (TTL, L2 rewrite, bpf_redirect_peer).
 *   from_underlay: tc ingress of the underlay device (the interface holding the node's address)
 *
 * Another node's pod's packet to a pod here used to go up this node's stack (ip_rcv, the input route
 * lookup, ip_forward, netfilter) to the pod's host veth, whose to_container applied the pod's ingress
 * policy. Here that same enforcement point (the pod's ingress: conntrack, then for a new flow the
 * ipcache identity of the source address and the policy) runs on the underlay device, and the packet
 * goes straight into the pod with bpf_redirect_peer.
 *
 * The sender's identity is the ipcache's for its address, exactly what to_container gave it: native
 * routing carries no identity, so a forged source gets its address's identity and never more. A source
 * this node itself vouches for (one of its own addresses: host; one of its pods: that pod) never
 * legitimately arrives from the underlay, so it is dropped as SOURCE_SPOOFED (enforce.h
 * underlay_spoofed, checked when a flow begins; a tracked flow with the host is recognised by its
 * entry): the stack dropped the former as a martian, but forwarded the latter to to_container, which
 * gave it the pod's identity.
 * What it takes no decision on goes on to the next tcx program (MBR_TCX_NEXT, lib/common.h: the device
 * is the node's) and then, as before, to the stack: every packet that is for no local pod (the node's
 * own traffic: this program then costs one hash lookup), that expires here (the stack answers with
 * ICMP time exceeded), that the parser refuses (to_container drops it with its reason and a DROP
 * event), and NDP/MLD (link-scoped, never through a router). */

/* The destination address of an IPv4/IPv6 packet, read from the header in place: the common case
 * (the node's own traffic) needs no full parse. false: not IP or no readable header. */
static __always_inline bool underlay_dst(struct __sk_buff *skb, struct ip_key *key)
{
	void *data, *data_end;

	__builtin_memset(key, 0, sizeof(*key));
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip;

		if (!linear_headers(skb, ETH_HLEN + sizeof(*ip), &data, &data_end))
			return false;
		ip = data + ETH_HLEN;
		key->family = MBR_FAMILY_IPV4;
		__builtin_memcpy(key->addr, &ip->daddr, 4);
		return true;
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6;

		if (!linear_headers(skb, ETH_HLEN + sizeof(*ip6), &data, &data_end))
			return false;
		ip6 = data + ETH_HLEN;
		key->family = MBR_FAMILY_IPV6;
		__builtin_memcpy(key->addr, &ip6->daddr, 16);
		return true;
	}
	return false;
}

static __always_inline int from_underlay_verdict(struct __sk_buff *skb)
{
	const struct overlay_config *cfg = overlay_cfg();
	struct endpoint_config *ep;
	struct local_endpoint *dst;
	struct ip_key key;
	struct pkt p;

	if (!cfg)
		return MBR_TCX_NEXT;
	/* Tunnel mode: other nodes' VXLAN datagrams for pods here (vxlan_rx.c). */
	if (cfg->tunnel_ifindex)
		return vxlan_rx(skb, cfg);
	/* Left attached by an earlier run in native mode: the stack's, as without it. */
	if (!(cfg->flags & OVERLAY_F_NATIVE))
		return MBR_TCX_NEXT;
	if (!underlay_dst(skb, &key))
		return MBR_TCX_NEXT;
	dst = bpf_map_lookup_elem(&local_endpoints, &key);
	if (!dst)
		return MBR_TCX_NEXT;
	if (parse_packet(skb, &p) != PARSE_IP || p.hop_limit <= 1 || is_icmp6_ndp(&p) || is_icmp6_mld(&p))
		return MBR_TCX_NEXT;
	ep = bpf_map_lookup_elem(&endpoints_cfg, &dst->host_ifindex);
	if (!ep)
		return MBR_TCX_NEXT; /* being set up or torn down: to_container fails closed on its own */
	/* An ICMP error can pass as related to a flow without its entry at hand: checked here (rare). */
	if (p.icmp_error && underlay_spoofed(&p, ipcache_identity(p.family, p.saddr))) {
		drop_at(&p, ep, POLICY_DIR_INGRESS, DROP_SOURCE_SPOOFED);
		return TC_ACT_SHOT;
	}
	/* The pod's ingress, with the ipcache's identity of the source (peer 0), as to_container does, and
	 * the underlay's own check (underlay_spoofed): a new flow's source as its identity is looked up,
	 * a tracked flow's by the peer identity its entry recorded, so established packets pay nothing. */
	return remote_ingress(skb, &p, ep, dst, 0, true, false, false);
}

SEC("tc")
int from_underlay(struct __sk_buff *skb)
{
	return tcx_final(from_underlay_verdict(skb), true);
}
