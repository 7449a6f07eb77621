// SPDX-License-Identifier: GPL-2.0
/* The overlay's receive short-cut (cluster mode, --routing-mode tunnel, IPv4 underlay): another node's
 * VXLAN datagram for a pod here is taken apart on the underlay device's tc ingress (from_underlay,
 * underlay.c) instead of going through the kernel's UDP and VXLAN receive path and the tunnel device.
 * Part of endpoint.o, included after tunnel.c.
 *
 * Why: a collect_md VXLAN device allocates a tunnel metadata object for every datagram it receives
 * (kmalloc, freed through RCU), queues the inner frame to its own NAPI context (gro_cells) and passes
 * it through the stack's receive path a second time, where from_tunnel then runs: ~2-3 µs of CPU per
 * cross-node connection over both nodes (perf by symbol in cross-node-prog-ab.ts: vxlan_rcv, the
 * datagram's ip_rcv and input route, the metadata's kmalloc and call_rcu), work plain VXLAN mostly
 * does too. The decision made here is from_tunnel's, with the same inputs:
 *  - the outer source must be a node of the cluster (its own tunnel_map entry) and not this node,
 *    the VNI the sender's identity (never the inner source address; "host" from another node is
 *    remote-node here);
 *  - the destination pod's ingress enforcement (enforce_peer with the VNI as the peer), then
 *    bpf_redirect_peer, or for a flow the L7 proxy takes the host device's hairpin (a strict rp_filter
 *    drops it on the underlay device: integration/cluster-overlay-l7.test.ts).
 * Only the plain case is taken: an unfragmented IPv4 datagram to this node's address and tunnel port
 * with no UDP checksum (Membrane's senders send none over IPv4), a valid outer header checksum (ip_rcv
 * drops a bad one), VXLAN flags exactly I, lengths that match (a GSO datagram only around TCP), an inner IPv4 packet for a
 * local pod that does not expire here and fits the pod's MTU (each segment of a GSO datagram; a larger one
 * is the tunnel device's, and the stack's after from_tunnel), and not an outer CE mark on a Not-ECT inner packet (vxlan_rcv
 * drops that one). ECN as vxlan_rcv (RFC 6040, INET_ECN_decapsulate): an outer CE becomes the inner
 * packet's CE when it is ECT, so congestion marked on the underlay reaches the receiving socket.
 * Everything else (the node's own traffic, IPv6 inside, a checksummed or odd datagram, a sender
 * that is no node) passes untouched to the stack, the VXLAN device and from_tunnel, which decide as
 * before, drops included. As with native routing's from_underlay, the node's netfilter hooks do not see the
 * datagrams taken here (Membrane installs nothing there), nor does the tunnel device count them. */

#define VXLAN_F_I 0x08000000U /* the VNI is valid (RFC 7348); no other flag is taken here */
/* What the short-cut removes after the outer MAC header: outer IPv4, UDP, VXLAN, inner Ethernet. */
#define VXLAN_RX_STRIP (sizeof(struct iphdr) + sizeof(struct udphdr) + 8 + ETH_HLEN)

#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#endif

/* The sender node's identity claim (VNI) of a datagram whose headers were checked, or 0 when
 * from_tunnel must decide (no node of the cluster, no identity). */
static __always_inline __u32 vxlan_rx_sender(__be32 saddr, __be32 vni_word)
{
	const struct tunnel_endpoint *te;
	__u32 vni = bpf_ntohl(vni_word) >> 8;
	__u8 src[16];

	__builtin_memset(src, 0, sizeof(src));
	__builtin_memcpy(src, &saddr, 4);
	te = tunnel_lookup(MBR_FAMILY_IPV4, src);
	if (!te || te->family != MBR_FAMILY_IPV4 || !addr_eq(te->addr, src) || !vni)
		return 0;
	return vni == IDENTITY_HOST ? IDENTITY_REMOTE_NODE : vni;
}

/* MBR_TCX_NEXT: not taken, nothing changed (the next program's and the stack's, as without this); else
 * the verdict. */
static __always_inline int vxlan_rx(struct __sk_buff *skb, const struct overlay_config *cfg)
{
	void *data, *data_end;
	struct iphdr *ip, *inner;
	struct udphdr *udp;
	__be32 *vx;
	struct ethhdr *ieth;
	struct local_endpoint *dst;
	struct endpoint_config *ep;
	struct ip_key key;
	struct pkt p;
	__u32 identity, len = skb->len;
	bool ce, gso = skb->gso_size != 0;

	if (!cfg->tunnel_port || !cfg->node_ipv4 || skb->ifindex != cfg->underlay_ifindex || skb->protocol != bpf_htons(ETH_P_IP) ||
	    skb->pkt_type != PACKET_HOST) /* a frame for another MAC: ip_rcv drops it */
		return MBR_TCX_NEXT;
	if (!linear_headers(skb, ETH_HLEN + VXLAN_RX_STRIP + sizeof(struct iphdr), &data, &data_end))
		return MBR_TCX_NEXT;
	ip = data + ETH_HLEN;
	udp = (void *)(ip + 1);
	vx = (void *)(udp + 1);
	ieth = (void *)(vx + 2);
	inner = (void *)(ieth + 1);
	if ((void *)(inner + 1) > data_end)
		return MBR_TCX_NEXT;
	if (ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) ||
	    ip->daddr != cfg->node_ipv4 || bpf_ntohs(ip->tot_len) != len - ETH_HLEN || ipv4_header_csum(ip))
		return MBR_TCX_NEXT;
	if (udp->dest != bpf_htons(cfg->tunnel_port) || udp->check || bpf_ntohs(udp->len) != len - ETH_HLEN - sizeof(*ip))
		return MBR_TCX_NEXT;
	if (vx[0] != bpf_htonl(VXLAN_F_I) || (vx[1] & bpf_htonl(0xff)) || ieth->h_proto != bpf_htons(ETH_P_IP))
		return MBR_TCX_NEXT;
	/* This node's own address as the outer source never arrives on the underlay (the node's datagrams
	 * to itself stay on lo), and names no other node: a stale node record holding it (a node renamed or
	 * replaced at the same address while the old record's lease runs) puts it in tunnel_map, where it
	 * would pass as a sender. Dropped, whatever tunnel_map says. */
	if (ip->saddr == cfg->node_ipv4)
		return drop_unknown(skb, DROP_UNKNOWN_SENDER);
	if (inner->version != 4 || inner->ttl <= 1 || (gso && inner->protocol != IPPROTO_TCP))
		return MBR_TCX_NEXT;
	ce = (ip->tos & INET_ECN_MASK) == INET_ECN_CE;
	if (ce && !(inner->tos & INET_ECN_MASK))
		return MBR_TCX_NEXT;
	__builtin_memset(&key, 0, sizeof(key));
	key.family = MBR_FAMILY_IPV4;
	__builtin_memcpy(key.addr, &inner->daddr, 4);
	dst = bpf_map_lookup_elem(&local_endpoints, &key);
	if (!dst)
		return MBR_TCX_NEXT;
	/* Larger than the pod's MTU (a GSO datagram: a segment of it): the tunnel device's, where
	 * from_tunnel hands it to the stack after the pod's policy (fits_mtu, remote_ingress). */
	if (!fits_mtu(skb, dst->host_ifindex, ETH_HLEN + VXLAN_RX_STRIP, len - ETH_HLEN - VXLAN_RX_STRIP,
		      ETH_HLEN + VXLAN_RX_STRIP + inner->ihl * 4, inner->protocol))
		return MBR_TCX_NEXT;
	identity = vxlan_rx_sender(ip->saddr, vx[1]);
	if (!identity)
		return MBR_TCX_NEXT;
	ep = bpf_map_lookup_elem(&endpoints_cfg, &dst->host_ifindex);
	if (!ep)
		return MBR_TCX_NEXT;
	/* From here on the datagram is the pod's packet: what from_tunnel would drop is dropped here. */
	if (ce && (inner->tos & INET_ECN_MASK) != INET_ECN_CE) {
		__u16 old = *(__u16 *)inner, new;

		inner->tos |= INET_ECN_CE;
		new = *(__u16 *)inner;
		if (bpf_l3_csum_replace(skb, ETH_HLEN + VXLAN_RX_STRIP + offsetof(struct iphdr, check), old, new, 2) < 0) {
			count_drop(DROP_INVALID_PACKET, len);
			return TC_ACT_SHOT;
		}
	}
	/* A GSO datagram (a bulk stream's, ~43 segments each) keeps its inner MSS (FIXED_GSO). Caveat on
	 * 6.18: the helper cannot clear the tunnel GSO state (SKB_GSO_UDP_TUNNEL, skb->encapsulation; only
	 * BPF_F_ADJ_ROOM_DECAP_L4_UDP, newer than 6.18, does), so the pod gets a TCP GSO skb still marked as
	 * tunnelled, whose inner header offsets are its own headers. Delivered to a socket that changes
	 * nothing; a pod that forwards it (DNAT to a nested netns, software segmentation forced) was seen to
	 * pass 8 MiB byte for byte; a NIC with tunnel TSO inside the pod would be asked to segment it as VXLAN. */
	if (bpf_skb_adjust_room(skb, -(__s32)VXLAN_RX_STRIP, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_DECAP_L3_IPV4 | (gso ? BPF_F_ADJ_ROOM_FIXED_GSO : 0)) < 0)
		return MBR_TCX_NEXT;
	if (parse_packet(skb, &p) != PARSE_IP)
		return drop_unknown(skb, p.drop_reason ? p.drop_reason : DROP_UNSUPPORTED_L2);
	return remote_ingress(skb, &p, ep, dst, identity, false, false, true);
}
