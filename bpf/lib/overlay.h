/* SPDX-License-Identifier: GPL-2.0 */
/* Pod-to-pod across nodes through one collect_md VXLAN device per node (cluster mode, --routing-mode
 * tunnel). No device per peer and no FDB: where a packet goes is a map lookup, and the VXLAN network
 * identifier carries the sender's security identity (24 bits: label identities fit; CIDR identities
 * never name a pod).
 *
 *   tunnel_map: LPM trie, remote pod CIDR -> the node owning it (its underlay address), and each remote
 *               node's own addresses (/32, /128) -> that node: pods reach other nodes through the
 *               tunnel too, so the underlay never sees a pod address.
 *   overlay_config: the tunnel device's ifindex (0: overlay off, e.g. native routing) and flags.
 * In native routing (OVERLAY_F_NATIVE, no tunnel device) tunnel_map holds only the other nodes' pod
 * CIDRs: a pod's packet to one of them leaves through the underlay device (fib.h) rather than up the
 * host stack's forwarding path.
 *
 * Sending (from_container, after the sender's egress policy): a destination in tunnel_map is handed to
 * the tunnel device with the tunnel key set (remote = the node's underlay address, VNI = the sending
 * endpoint's identity), or over an IPv4 underlay wrapped in that same VXLAN datagram by the program
 * itself and sent out of the underlay device (vxlan_tx.h). Receiving (from_tunnel, tunnel.c): the outer source must be a node of the
 * cluster, the peer identity is the VNI and never the inner source address, the destination
 * endpoint's ingress policy decides, and the packet goes straight into the pod with bpf_redirect_peer
 * (the same decision runs on the underlay device for the plain IPv4 case: vxlan_rx.c).
 * Packets the host stack routes into the tunnel device (the node itself talking to remote pods) get
 * their key in to_tunnel (tunnel.c), with an identity the node vouches for (never read from the packet). */
#pragma once

#include "counters.h"
#include "maps.h"
#include "parse.h"

#define IDENTITY_REMOTE_NODE 6 /* another node of the cluster (Cilium's number) */
#define VNI_MAX ((1U << 24) - 1)

#define OVERLAY_F_UNDERLAY_IPV6 (1U << 0) /* the underlay (node addresses) is IPv6 */
#define OVERLAY_F_NATIVE (1U << 1)        /* native routing: tunnel_map holds the other nodes' pod CIDRs, fib.h sends */

struct overlay_config {
	__u32 tunnel_ifindex;   /* 0: no overlay */
	__u32 flags;            /* OVERLAY_F_* */
	__u32 underlay_ifindex; /* OVERLAY_F_NATIVE: where pods' packets to other nodes' pods leave; tunnel
				 * mode: where other nodes' VXLAN datagrams arrive (vxlan_rx.h) */
	__u32 tunnel_port;      /* tunnel mode: the VXLAN UDP port (host order); 0: no receive short-cut */
	__u32 node_ipv4;        /* tunnel mode, IPv4 underlay: this node's address (network order) */
	__u32 reserved[3];
};
_Static_assert(sizeof(struct overlay_config) == 32, "overlay_config layout is shared with userspace");

/* Where an address lives: the remote node's underlay address (family 4: addr[0..3]). */
struct tunnel_endpoint {
	__u8 family; /* of addr: MBR_FAMILY_IPV4 / MBR_FAMILY_IPV6 */
	__u8 pad[3];
	__u32 node_id;
	__u8 addr[16];
};
_Static_assert(sizeof(struct tunnel_endpoint) == 24, "tunnel_endpoint layout is shared with userspace");

#define MAX_TUNNEL_ENTRIES 16384 /* per remote node: an IPv4 and an IPv6 pod CIDR and its addresses */

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_TUNNEL_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key); /* the ipcache's key layout */
	__type(value, struct tunnel_endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tunnel_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct overlay_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} overlay_config SEC(".maps");

#include "fib.h" /* native routing's send path: needs struct tunnel_endpoint */
#include "vxlan_tx.h" /* tunnel mode's send short-cut */

static __always_inline const struct overlay_config *overlay_cfg(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&overlay_config, &zero);
}

static __always_inline const struct tunnel_endpoint *tunnel_lookup(__u8 family, const __u8 *addr)
{
	struct ipcache_key k;

	__builtin_memset(&k, 0, sizeof(k));
	k.prefixlen = 32 + (family == MBR_FAMILY_IPV4 ? 32 : 128);
	k.family = family;
	__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(&tunnel_map, &k);
}

/* Remote = the node's underlay address, VNI = identity. 0, or a negative error. */
static __always_inline long set_tunnel(struct __sk_buff *skb, const struct tunnel_endpoint *te, __u32 identity)
{
	struct bpf_tunnel_key key;
	__u64 flags = 0;

	__builtin_memset(&key, 0, sizeof(key));
	key.tunnel_id = identity;
	key.tunnel_ttl = 64;
	if (te->family == MBR_FAMILY_IPV4) {
		__u32 a;

		__builtin_memcpy(&a, te->addr, 4);
		key.remote_ipv4 = bpf_ntohl(a); /* the helper takes it in host order */
		flags = BPF_F_ZERO_CSUM_TX;
	} else {
		__builtin_memcpy(key.remote_ipv6, te->addr, 16); /* network order, copied as is */
		flags = BPF_F_TUNINFO_IPV6;
	}
	return bpf_skb_set_tunnel_key(skb, &key, sizeof(key), flags);
}

/* The sender's side, from tc ingress of its host veth after its egress policy passed: a destination
 * on another node goes into the tunnel (TC_ACT_REDIRECT), or in native routing out of the underlay
 * device (fib.h); anything else stays with the caller's TC_ACT_OK (the host stack). A packet about to
 * expire stays with the stack, which answers with ICMP time exceeded. */
static __always_inline int to_overlay(struct __sk_buff *skb, const struct pkt *p, const struct endpoint_config *src)
{
	const struct overlay_config *cfg = overlay_cfg();
	const struct tunnel_endpoint *te;
	int r;

	if (!cfg || p->hop_limit <= 1)
		return TC_ACT_OK;
	if (!cfg->tunnel_ifindex && !(cfg->flags & OVERLAY_F_NATIVE))
		return TC_ACT_OK;
	te = tunnel_lookup(p->family, p->daddr);
	if (!te)
		return TC_ACT_OK;
	if (!cfg->tunnel_ifindex)
		return native_forward(skb, p->family, cfg->underlay_ifindex, te);
	r = vxlan_tx(skb, p, cfg, te, src->identity);
	if (r != VXLAN_TX_NOT_TAKEN)
		return r;
	if (set_tunnel(skb, te, src->identity) < 0) {
		count_drop(DROP_NO_TUNNEL_ENDPOINT, p->len);
		return TC_ACT_SHOT;
	}
	return bpf_redirect(cfg->tunnel_ifindex, 0);
}
