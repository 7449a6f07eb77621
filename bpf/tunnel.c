// SPDX-License-Identifier: GPL-2.0
/* The tunnel device's programs (cluster mode, --routing-mode tunnel; the design is in lib/overlay.h).
 * Part of endpoint.o: endpoint.c includes this file last, so both programs share its maps and its
 * delivery helpers (L2 rewrite, TTL, bpf_redirect_peer).
 *   from_tunnel: tc ingress of the collect_md VXLAN device (packets other nodes sent; over an IPv4
 *                underlay an IPv4 pod's packet is taken on the underlay device first, vxlan_rx.c)
 *   to_tunnel:   tc egress of it (packets the host stack routes into it, and those from_container
 *                redirected there with their key set: over an IPv4 underlay only IPv6 pod packets,
 *                since from_container wraps IPv4 ones itself, lib/vxlan_tx.h) */

static __always_inline __u64 underlay_flags(const struct overlay_config *cfg)
{
	return cfg->flags & OVERLAY_F_UNDERLAY_IPV6 ? BPF_F_TUNINFO_IPV6 : 0;
}

/* Who sent a decapsulated packet: the outer source must be a node of the cluster (its own entry in
 * tunnel_map), and the VNI is the sender's identity. 0, or the drop reason. The node's own identity
 * never crosses the tunnel: "host" from another node is that node, remote-node here. */
static __always_inline __u16 tunnel_sender(struct __sk_buff *skb, const struct overlay_config *cfg, __u32 *identity)
{
	__u8 family = cfg->flags & OVERLAY_F_UNDERLAY_IPV6 ? MBR_FAMILY_IPV6 : MBR_FAMILY_IPV4;
	const struct tunnel_endpoint *te;
	struct bpf_tunnel_key key;
	__u8 src[16];

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), underlay_flags(cfg)) < 0)
		return DROP_NO_TUNNEL_ENDPOINT;
	__builtin_memset(src, 0, sizeof(src));
	if (family == MBR_FAMILY_IPV4) {
		__u32 a = bpf_htonl(key.remote_ipv4);

		__builtin_memcpy(src, &a, 4);
	} else {
		__builtin_memcpy(src, key.remote_ipv6, 16);
	}
	/* A pod CIDR entry holds its node's address, never the address looked up: only a node's own
	 * entry names the sender itself. */
	te = tunnel_lookup(family, src);
	if (!te || te->family != family || !addr_eq(te->addr, src))
		return DROP_UNKNOWN_SENDER;
	/* This node is never another node, even if a stale node record put its address in tunnel_map: a
	 * datagram from its own address (any local process can send one to the tunnel port) claims nothing. */
	if (family == MBR_FAMILY_IPV4 && cfg->node_ipv4 && bpf_htonl(key.remote_ipv4) == cfg->node_ipv4)
		return DROP_UNKNOWN_SENDER;
	if (!key.tunnel_id || key.tunnel_id > VNI_MAX)
		return DROP_INVALID_VNI;
	*identity = key.tunnel_id == IDENTITY_HOST ? IDENTITY_REMOTE_NODE : key.tunnel_id;
	return 0;
}

static __always_inline int from_tunnel_verdict(struct __sk_buff *skb)
{
	const struct overlay_config *cfg = overlay_cfg();
	struct endpoint_config *ep;
	struct local_endpoint *dst;
	struct ip_key key;
	struct pkt p;
	__u32 identity = 0;
	__u16 reason;
	int r;

	if (!cfg || !cfg->tunnel_ifindex)
		return drop_unknown(skb, DROP_NO_TUNNEL_ENDPOINT); /* not configured: nothing comes in */
	reason = tunnel_sender(skb, cfg, &identity);
	if (reason)
		return drop_unknown(skb, reason);
	r = parse_packet(skb, &p);
	if (r == PARSE_OTHER)
		return drop_unknown(skb, DROP_UNSUPPORTED_L2);
	if (r == PARSE_DROP)
		return drop_unknown(skb, p.drop_reason);

	__builtin_memset(&key, 0, sizeof(key));
	key.family = p.family;
	__builtin_memcpy(key.addr, p.daddr, 16);
	dst = bpf_map_lookup_elem(&local_endpoints, &key);
	if (!dst || p.hop_limit <= 1) {
		/* For the node itself (its gateway or node address), or expiring: the stack's. The inner
		 * frame is addressed to the sending node's device; the stack must take it as its own. */
		bpf_skb_change_type(skb, PACKET_HOST);
		return TC_ACT_OK;
	}
	ep = bpf_map_lookup_elem(&endpoints_cfg, &dst->host_ifindex);
	if (!ep)
		return drop_unknown(skb, DROP_NO_CONFIG);
	/* Neighbour discovery and MLD belong to one link, and the tunnel is none of the pod's. */
	if (is_icmp6_ndp(&p) || is_icmp6_mld(&p)) {
		drop_at(&p, ep, POLICY_DIR_INGRESS, DROP_FORBIDDEN_ICMPV6);
		return TC_ACT_SHOT;
	}
	/* The destination's ingress policy, with the VNI as the peer (to_container never sees it). */
	return remote_ingress(skb, &p, ep, dst, identity, false, true, false);
}

SEC("tc")
int from_tunnel(struct __sk_buff *skb)
{
	return tcx_final(from_tunnel_verdict(skb), false);
}

static __always_inline int to_tunnel_verdict(struct __sk_buff *skb)
{
	const struct overlay_config *cfg = overlay_cfg();
	const struct tunnel_endpoint *te;
	struct bpf_tunnel_key key;
	struct endpoint_config *ep;
	__u32 in = skb->ingress_ifindex, identity;
	struct pkt p;

	if (!cfg)
		return drop_unknown(skb, DROP_NO_TUNNEL_ENDPOINT);
	/* from_container set the key (the sending pod's identity): on its way. */
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), underlay_flags(cfg)) == 0)
		return TC_ACT_OK;
	if (parse_packet(skb, &p) != PARSE_IP)
		return drop_unknown(skb, DROP_UNSUPPORTED_L2);
	te = tunnel_lookup(p.family, p.daddr);
	if (!te)
		return drop_unknown(skb, DROP_NO_TUNNEL_ENDPOINT);
	/* The identity is who vouches for the packet, never its source address: this node for what it
	 * sends itself, a local endpoint for what it sent through the stack (anti-spoofing checked it),
	 * nobody (world) for what the node forwards from elsewhere. */
	if (!in)
		identity = IDENTITY_REMOTE_NODE;
	else if ((ep = bpf_map_lookup_elem(&endpoints_cfg, &in)))
		identity = ep->identity;
	else
		identity = IDENTITY_WORLD;
	if (set_tunnel(skb, te, identity) < 0)
		return drop_unknown(skb, DROP_NO_TUNNEL_ENDPOINT);
	return TC_ACT_OK;
}

SEC("tc")
int to_tunnel(struct __sk_buff *skb)
{
	return tcx_final(to_tunnel_verdict(skb), false);
}
