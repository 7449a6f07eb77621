/* SPDX-License-Identifier: GPL-2.0 */
/* Diverting flows to an L7 proxy on this node (shared/src/l7). A policy entry with a proxy port
 * (policy.h) admits a flow at L3/L4 and sends it to the proxy listening on 127.0.0.1:port / [::1]:port
 * with IP_TRANSPARENT: the packet keeps its addresses, so the proxy's accepted socket has the flow's
 * original destination as its local address and the client's as its peer (its identity).
 *
 * How a packet reaches the proxy: the program marks it (MARK_TO_PROXY) and a policy routing rule
 * (shared/src/l7/routing.ts, same numbers) routes marked packets through a table whose default route
 * is local, so the stack delivers them instead of forwarding. A SYN is also assigned to the proxy's
 * listener with bpf_sk_assign (the listener's address is not the packet's); later packets find the
 * accepted socket by their 4-tuple. Both need tc ingress: from_container (a pod's packets) diverts in
 * place; to_container (packets the stack delivers to a pod: from the world, the host, other nodes)
 * hairpins them into the host device's ingress (from_host_device below), marked with the port.
 * No listener (proxy down) drops the SYN: new connections fail closed, counted and reported as
 * DROP_PROXY_LOOKUP_FAILED. UDP (the DNS proxy, shared/src/dns) has no accepted sockets: every datagram
 * is assigned to the proxy's socket, and its original destination is recorded in proxy_udp_dst (the
 * proxy reads it by the client's address and port, then answers from that destination); no socket
 * (proxy down) drops it the same way. The proxy's own upstream connections come from the node's addresses (host
 * identity), which is never diverted at ingress: its traffic cannot loop or pass for a pod's. */
#pragma once

#include "maps.h"
#include "parse.h"

#define MARK_MAGIC_MASK 0x0f00
#define MARK_TO_PROXY 0x0e00 /* bits 16-31: the proxy port (hairpinned packets) */

#define IDENTITY_HOST 1

/* The host device that hairpinned packets enter (written by the agent). */
struct proxy_config {
	__u32 host_ifindex;
	__u8 host_mac[ETH_ALEN];
	__u8 pad[6];
};
_Static_assert(sizeof(struct proxy_config) == 16, "proxy_config layout is shared with userspace");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct proxy_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} proxy_config SEC(".maps");

/* Where a diverted datagram was going, by its sender (address, port): the DNS proxy reads it to know
 * which server the client asked and to answer as that server. LRU: entries of finished exchanges are
 * recycled; a client reuses a source port only for its next query. Layout shared with shared/src/dns. */
struct proxy_udp_key {
	__u8 family;
	__u8 pad;
	__be16 sport;
	__u8 saddr[16];
};
_Static_assert(sizeof(struct proxy_udp_key) == 20, "proxy_udp_key layout is shared with userspace");

struct proxy_udp_dst {
	__u8 daddr[16];
	__be16 dport;
	__u8 pad[2];
};
_Static_assert(sizeof(struct proxy_udp_dst) == 20, "proxy_udp_dst layout is shared with userspace");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct proxy_udp_key);
	__type(value, struct proxy_udp_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} proxy_udp_dst SEC(".maps");

/* A diverted UDP datagram: its destination recorded, then it goes to the proxy's socket. */
static __always_inline __u16 proxy_assign_udp(struct __sk_buff *skb, const struct pkt *p, __u16 port)
{
	struct proxy_udp_key k;
	struct proxy_udp_dst v;
	struct bpf_sock_tuple t;
	struct bpf_sock *sk;
	__u32 size;
	long err;

	__builtin_memset(&k, 0, sizeof(k));
	__builtin_memset(&v, 0, sizeof(v));
	__builtin_memset(&t, 0, sizeof(t));
	k.family = p->family;
	k.sport = p->sport;
	__builtin_memcpy(k.saddr, p->saddr, 16);
	__builtin_memcpy(v.daddr, p->daddr, 16);
	v.dport = p->dport;
	if (p->family == MBR_FAMILY_IPV4) {
		__builtin_memcpy(&t.ipv4.saddr, p->saddr, 4);
		t.ipv4.daddr = bpf_htonl(0x7f000001);
		t.ipv4.sport = p->sport;
		t.ipv4.dport = bpf_htons(port);
		size = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, p->saddr, 16);
		t.ipv6.daddr[3] = bpf_htonl(1);
		t.ipv6.sport = p->sport;
		t.ipv6.dport = bpf_htons(port);
		size = sizeof(t.ipv6);
	}
	sk = bpf_sk_lookup_udp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return DROP_PROXY_LOOKUP_FAILED;
	if (bpf_map_update_elem(&proxy_udp_dst, &k, &v, BPF_ANY) < 0) {
		bpf_sk_release(sk);
		return DROP_PROXY_SET_FAILED;
	}
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? DROP_PROXY_SET_FAILED : 0;
}

/* The proxy port a policy entry sends a flow to (0: none). Never for ingress from the host: the node
 * may always reach its endpoints, and the proxy's own connections come from it. */
static __always_inline __u16 proxy_port_of(const struct policy_entry *pe, __u8 dir, __u32 peer)
{
	if (!pe || pe->action != POLICY_ACTION_ALLOW || !pe->proxy_port)
		return 0;
	if (dir == POLICY_DIR_INGRESS && peer == IDENTITY_HOST)
		return 0;
	return bpf_ntohs(pe->proxy_port);
}

/* At tc ingress: mark for local delivery; a SYN goes to the proxy's listener. 0, or a drop reason. */
static __always_inline __u16 proxy_assign(struct __sk_buff *skb, const struct pkt *p, __u16 port)
{
	struct bpf_sock_tuple t;
	struct bpf_sock *sk;
	__u32 size;
	long err;

	skb->mark = MARK_TO_PROXY;
	if (p->proto == IPPROTO_UDP && p->has_l4 && !p->later_fragment)
		return proxy_assign_udp(skb, p, port);
	if (!(p->proto == IPPROTO_TCP && p->has_l4 && (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN))
		return 0; /* later packets: the local route takes them to the accepted socket */
	__builtin_memset(&t, 0, sizeof(t));
	if (p->family == MBR_FAMILY_IPV4) {
		__builtin_memcpy(&t.ipv4.saddr, p->saddr, 4);
		t.ipv4.daddr = bpf_htonl(0x7f000001);
		t.ipv4.sport = p->sport;
		t.ipv4.dport = bpf_htons(port);
		size = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, p->saddr, 16);
		t.ipv6.daddr[3] = bpf_htonl(1);
		t.ipv6.sport = p->sport;
		t.ipv6.dport = bpf_htons(port);
		size = sizeof(t.ipv6);
	}
	sk = bpf_sk_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return DROP_PROXY_LOOKUP_FAILED;
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? DROP_PROXY_SET_FAILED : 0;
}

/* At tc egress towards a pod: send the packet back up through the host device's ingress, where
 * from_host_device assigns it. TC_ACT_REDIRECT, or TC_ACT_SHOT when the agent has not configured the
 * host device yet (fail closed). */
static __always_inline int proxy_hairpin(struct __sk_buff *skb, const struct pkt *p, __u16 port, __u16 *reason)
{
	__u32 zero = 0;
	const struct proxy_config *cfg = bpf_map_lookup_elem(&proxy_config, &zero);
	struct bpf_sock_tuple t;
	struct bpf_sock *sk;

	if (!cfg || !cfg->host_ifindex) {
		*reason = DROP_PROXY_LOOKUP_FAILED;
		return TC_ACT_SHOT;
	}
	/* A SYN without a listener fails closed here, where the drop can name the endpoint. */
	if (p->proto == IPPROTO_TCP && p->has_l4 && (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN) {
		__builtin_memset(&t, 0, sizeof(t));
		if (p->family == MBR_FAMILY_IPV4) {
			t.ipv4.daddr = bpf_htonl(0x7f000001);
			t.ipv4.dport = bpf_htons(port);
			sk = bpf_sk_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		} else {
			t.ipv6.daddr[3] = bpf_htonl(1);
			t.ipv6.dport = bpf_htons(port);
			sk = bpf_sk_lookup_tcp(skb, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
		}
		if (!sk) {
			*reason = DROP_PROXY_LOOKUP_FAILED;
			return TC_ACT_SHOT;
		}
		bpf_sk_release(sk);
	}
	/* Delivered to the host device as to itself (else the stack drops it as another host's). */
	if (bpf_skb_store_bytes(skb, 0, cfg->host_mac, ETH_ALEN, 0) < 0) {
		*reason = DROP_PROXY_SET_FAILED;
		return TC_ACT_SHOT;
	}
	skb->mark = MARK_TO_PROXY | ((__u32)port << 16);
	return bpf_redirect(cfg->host_ifindex, BPF_F_INGRESS);
}
