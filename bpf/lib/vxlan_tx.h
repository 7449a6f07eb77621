/* SPDX-License-Identifier: GPL-2.0 */
/* The overlay's send short-cut (tunnel mode, IPv4 underlay): a pod's IPv4 packet for another node's
 * pod is wrapped in VXLAN here, in from_container, and sent where the node's routing table sends
 * datagrams to the other node (bpf_fib_lookup: the device and the next hop, so a routed underlay works
 * as with the tunnel device; bpf_redirect_neigh to that hop, so its neighbour entry is re-confirmed
 * as the stack would), instead of being keyed (set_tunnel) and redirected into the collect_md tunnel
 * device, whose egress runs to_tunnel and whose transmit path does that route lookup too
 * (vxlan_xmit_one, iptunnel_xmit). The datagram is the one the tunnel device would have built: this
 * node's address to the other node's (tunnel_map), UDP to the tunnel port from a source port picked by
 * the inner flow's hash, no UDP checksum (as Membrane's tunnel device sends over IPv4), no DF and an
 * IP id of its own (as the device: see below), VXLAN flags I, VNI = the sending endpoint's identity,
 * the pod's own Ethernet header inside. The outer
 * TOS carries the inner packet's ECN field as the tunnel device's does (RFC 6040, INET_ECN_encapsulate:
 * ECT stays ECT, CE becomes ECT(0), so a router on the underlay can mark congestion and vxlan_rx.c
 * or vxlan_rcv carries its CE mark into the pod's packet).
 * Not taken (the tunnel device's path, as before): IPv6 inside, an IPv6 underlay, no configuration
 * (an older agent), a packet, or a GSO packet's segment, that would not fit the underlay's MTU once
 * wrapped, a next hop whose MAC the node does not know yet (the tunnel
 * device's path resolves it). As with native routing, the node's netfilter hooks do not see
 * these datagrams, nor does the tunnel device count them. */
#pragma once
/* Included by overlay.h, after struct overlay_config and struct tunnel_endpoint. */

#include <linux/udp.h>
#include "common.h"
#include "counters.h"
#include "parse.h"

#define VXLAN_TX_NOT_TAKEN (-1)
#define VXLAN_TX_ROOM (sizeof(struct iphdr) + sizeof(struct udphdr) + 8 + ETH_HLEN) /* 50 */
#define INET_ECN_MASK 3
#define INET_ECN_ECT_0 2
#define INET_ECN_CE 3

/* Outer IPv4 ids. The datagrams go without DF (below), so a router may fragment them and the other
 * node reassembles by (source, destination, protocol, id): each needs an id of its own. One counter per
 * CPU (no atomics: the object is built for BPF v1, where an atomic add cannot return the old value),
 * on a cache line of its own, started at a random point; a GSO packet takes one id per segment, which
 * segmentation numbers on from the first (as the kernel does for the tunnel device, whose ids come
 * from ip_idents, hashed by destination). Two CPUs can meet on an id: only a problem if both datagrams
 * are fragmented and in flight to the same node together, and the inner TCP/UDP checksum stays. */
#define VXLAN_TX_ID_SLOTS 128
struct vxlan_tx_id {
	__u32 next;
	__u32 pad[15];
};
static struct vxlan_tx_id vxlan_tx_ids[VXLAN_TX_ID_SLOTS];

static __always_inline __u16 vxlan_tx_ip_id(__u32 segs)
{
	struct vxlan_tx_id *slot = &vxlan_tx_ids[bpf_get_smp_processor_id() & (VXLAN_TX_ID_SLOTS - 1)];
	__u32 id = slot->next;

	if (!id)
		id = bpf_get_prandom_u32() | 1;
	slot->next = id + (segs ? segs : 1);
	return id;
}

static __always_inline __u16 ipv4_header_csum(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* The IPv4 length of each segment a GSO packet is cut into (IP and L4 headers, gso_size of payload),
 * as skb_gso_validate_network_len counts it; 0xffff (never fits) for what is neither TCP nor UDP. */
static __always_inline __u32 vxlan_tx_segment_len(struct __sk_buff *skb, const struct pkt *p)
{
	__u8 doff;

	if (p->proto == IPPROTO_UDP)
		return p->l4_off - ETH_HLEN + sizeof(struct udphdr) + skb->gso_size;
	if (p->proto != IPPROTO_TCP || bpf_skb_load_bytes(skb, p->l4_off + 12, &doff, 1) < 0)
		return 0xffff;
	return p->l4_off - ETH_HLEN + (doff >> 4) * 4 + skb->gso_size;
}

/* TC_ACT_REDIRECT (sent), TC_ACT_SHOT (could not be written once the room was made: counted), or
 * VXLAN_TX_NOT_TAKEN with the packet unchanged. The route is looked up before anything changes. */
static __always_inline int vxlan_tx(struct __sk_buff *skb, const struct pkt *p, const struct overlay_config *cfg,
				    const struct tunnel_endpoint *te, __u32 identity)
{
	const __u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
			    BPF_F_ADJ_ROOM_ENCAP_L2_ETH | BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN);
	__u32 len = skb->len, hash, mtu = 0, daddr;
	void *data, *data_end;
	struct bpf_fib_lookup fib;
	struct bpf_redir_neigh nh;
	struct iphdr *ip;
	struct udphdr *udp;
	__be32 *vx;
	__u16 id;
	__u8 tos;

	if (!cfg->tunnel_port || !cfg->node_ipv4 || !cfg->underlay_ifindex || te->family != MBR_FAMILY_IPV4 ||
	    p->family != MBR_FAMILY_IPV4 || skb->protocol != bpf_htons(ETH_P_IP) || len - ETH_HLEN + VXLAN_TX_ROOM > 0xffff)
		return VXLAN_TX_NOT_TAKEN;
	__builtin_memcpy(&daddr, te->addr, 4);
	__builtin_memset(&fib, 0, sizeof(fib));
	fib.family = AF_INET;
	fib.l4_protocol = IPPROTO_UDP;
	fib.ipv4_src = cfg->node_ipv4;
	fib.ipv4_dst = daddr;
	/* Out of the underlay device (the one holding the node's address) or not at all: with it as the
	 * output interface, a route whose next hop is elsewhere does not match (multi-homed nodes keep the
	 * tunnel device's path). */
	fib.ifindex = cfg->underlay_ifindex;
	/* The datagram's length (each segment's for a GSO packet): the lookup then answers FRAG_NEEDED
	 * above the path's MTU as the node knows it (a path MTU learnt from a router's "fragmentation
	 * needed", else a locked route MTU, else the device's), and the tunnel device, which fragments,
	 * sends it. Without it, the DF datagrams below went on being dropped by that router. */
	fib.tot_len = (skb->gso_size ? vxlan_tx_segment_len(skb, p) : len - ETH_HLEN) + VXLAN_TX_ROOM;
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT) != BPF_FIB_LKUP_RET_SUCCESS)
		return VXLAN_TX_NOT_TAKEN;
	if (bpf_check_mtu(skb, fib.ifindex, &mtu, VXLAN_TX_ROOM, 0) != 0)
		return VXLAN_TX_NOT_TAKEN;
	/* bpf_check_mtu passes every GSO packet (its length is that of all segments); mtu is now the
	 * device's. Each segment must fit once wrapped: a pod whose MTU was raised inside its netns sends
	 * segments of up to its own MTU, and the NIC would put frames on the wire that the underlay drops
	 * unseen. Such a packet takes the tunnel device, which segments and fragments it. */
	if (skb->gso_size && vxlan_tx_segment_len(skb, p) + VXLAN_TX_ROOM > mtu)
		return VXLAN_TX_NOT_TAKEN;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, tos), &tos, 1) < 0)
		return VXLAN_TX_NOT_TAKEN;
	hash = bpf_get_hash_recalc(skb);
	id = vxlan_tx_ip_id(skb->gso_segs);
	if (bpf_skb_adjust_room(skb, VXLAN_TX_ROOM, BPF_ADJ_ROOM_MAC, flags) < 0)
		return VXLAN_TX_NOT_TAKEN;
	if (!linear_headers(skb, ETH_HLEN + VXLAN_TX_ROOM, &data, &data_end)) {
		count_drop(DROP_NO_TUNNEL_ENDPOINT, len);
		return TC_ACT_SHOT;
	}
	ip = data + ETH_HLEN;
	udp = (void *)(ip + 1);
	vx = (void *)(udp + 1);
	/* The pod's frame keeps its own Ethernet header inside. The outer one: the lookup's MACs (a unicast
	 * header for bpf_redirect_neigh, which writes the neighbour's own over them). */
	__builtin_memcpy((void *)(vx + 2), data, ETH_HLEN);
	__builtin_memcpy(data, fib.dmac, ETH_ALEN);
	__builtin_memcpy(data + ETH_ALEN, fib.smac, ETH_ALEN);
	((struct ethhdr *)data)->h_proto = bpf_htons(ETH_P_IP);
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = (tos & INET_ECN_MASK) == INET_ECN_CE ? INET_ECN_ECT_0 : tos & INET_ECN_MASK;
	ip->tot_len = bpf_htons(len - ETH_HLEN + VXLAN_TX_ROOM);
	ip->id = bpf_htons(id);
	/* No DF, as the tunnel device sends (its key sets no BPF_F_DONT_FRAGMENT; the kernel's VXLAN does
	 * not set DF by default): the short-cut must not change which datagrams cross the underlay. A
	 * router with a smaller MTU fragments this datagram, as it fragments the device's, instead of
	 * dropping it. With DF it was lost until the node learnt the path MTU from the router's
	 * "fragmentation needed", and for good where that ICMP never arrives (a router or firewall that
	 * drops or rate-limits it: a PMTU black hole, where the pod's TCP, which never sees that ICMP,
	 * resends the same size forever). The lookup above still sends datagrams above a known path MTU
	 * to the device, which fragments them here rather than at the router. */
	ip->frag_off = 0;
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = cfg->node_ipv4;
	ip->daddr = daddr;
	ip->check = ipv4_header_csum(ip);
	udp->source = bpf_htons(49152 + (hash % 16384)); /* the inner flow's: ECMP and RSS spread flows */
	udp->dest = bpf_htons(cfg->tunnel_port);
	udp->len = bpf_htons(len - ETH_HLEN + VXLAN_TX_ROOM - sizeof(*ip));
	udp->check = 0;
	vx[0] = bpf_htonl(0x08000000); /* I: the VNI is valid */
	vx[1] = bpf_htonl(identity << 8);
	/* Through the neighbour layer, not bpf_redirect with the lookup's MACs: a STALE entry (valid for
	 * bpf_fib_lookup) is then re-confirmed (DELAY, PROBE) as the tunnel device's path would, instead
	 * of being used as it is forever once the next hop's MAC changed. */
	__builtin_memset(&nh, 0, sizeof(nh));
	nh.nh_family = AF_INET;
	nh.ipv4_nh = fib.ipv4_dst; /* the lookup's next hop: the gateway, or the other node on the link */
	return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
}
