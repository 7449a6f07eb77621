/* SPDX-License-Identifier: GPL-2.0 */
/* Diverting flows to an L7 proxy on this node (shared/src/l7). A policy entry with a proxy port
 * (policy.h) admits a flow at L3/L4 and sends it to the proxy listening on 127.0.0.1:port / [::1]:port
 * with IP_TRANSPARENT: the packet keeps its addresses, so the proxy's accepted socket has the flow's
 * original destination as its local address and the client's as its peer (its identity).
 *
 * How a packet reaches the proxy: the program marks it (MARK_TO_PROXY) and a policy routing rule
 * (shared/src/l7/routing.ts, same numbers) routes marked packets through a table whose default route
 * is local, so the stack delivers them instead of forwarding. A SYN's 4-tuple is recorded in
 * proxy_tcp_divert, and the netns's socket lookup (proxy_steer, an sk_lookup program) hands it to the
 * proxy's listener (the listener's address is not the packet's); later packets find the accepted
 * socket by their 4-tuple. Not bpf_sk_assign at tc: a SYN assigned there skips the kernel's TIME_WAIT
 * handling, so a connection the proxy closed first would refuse the client's next one from the same
 * port for 60 s; the socket lookup runs after it, as for any listener. Both need tc ingress:
 * from_container (a pod's packets) diverts in
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

/* The tuple that finds the proxy's socket on 127.0.0.1:port / [::1]:port for a packet from p's
 * source; its size for bpf_sk_lookup_*. */
static __always_inline __u32 proxy_local_tuple(struct bpf_sock_tuple *t, const struct pkt *p, __u16 port)
{
	__builtin_memset(t, 0, sizeof(*t));
	if (p->family == MBR_FAMILY_IPV4) {
		__builtin_memcpy(&t->ipv4.saddr, p->saddr, 4);
		t->ipv4.daddr = bpf_htonl(0x7f000001);
		t->ipv4.sport = p->sport;
		t->ipv4.dport = bpf_htons(port);
		return sizeof(t->ipv4);
	}
	__builtin_memcpy(t->ipv6.saddr, p->saddr, 16);
	t->ipv6.daddr[3] = bpf_htonl(1);
	t->ipv6.sport = p->sport;
	t->ipv6.dport = bpf_htons(port);
	return sizeof(t->ipv6);
}

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
	k.family = p->family;
	k.sport = p->sport;
	__builtin_memcpy(k.saddr, p->saddr, 16);
	__builtin_memcpy(v.daddr, p->daddr, 16);
	v.dport = p->dport;
	size = proxy_local_tuple(&t, p, port);
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

/* A diverted TCP SYN's 4-tuple -> the proxy port; written at tc for every SYN, consumed by proxy_steer.
 * Addresses as in struct pkt (IPv4 in the first 4 bytes); ports in network byte order. */
struct proxy_tcp_key {
	__u8 family;
	__u8 pad;
	__be16 sport;
	__be16 dport;
	__u8 pad2[2];
	__u8 saddr[16];
	__u8 daddr[16];
};
_Static_assert(sizeof(struct proxy_tcp_key) == 40, "proxy_tcp_key layout");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct proxy_tcp_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} proxy_tcp_divert SEC(".maps");

/* The proxy's listening sockets, inserted by its workers (shared/src/l7/proxy/steering.ts):
 * key = family << 24 | slot << 16 | port. Each worker of a port has its own slot, and its listeners
 * share one SO_REUSEPORT group, so any one found spreads connections over all of them; a closed
 * socket leaves the map by itself. */
#define PROXY_LISTENER_SLOTS 4
#ifndef AF_INET
#define AF_INET 2
#define AF_INET6 10
#endif
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} proxy_listeners SEC(".maps");

/* A listener of the proxy on `port` registered in proxy_listeners (a reference to release), or NULL. */
static __always_inline struct bpf_sock *proxy_listener(__u8 family, __u16 port)
{
	struct bpf_sock *sk = NULL;
	int i;

	for (i = 0; i < PROXY_LISTENER_SLOTS && !sk; i++) {
		__u32 key = ((__u32)family << 24) | ((__u32)i << 16) | port;
		sk = bpf_map_lookup_elem(&proxy_listeners, &key);
	}
	return sk;
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

/* At tc ingress: mark for local delivery; a SYN is recorded for proxy_steer. 0, or a drop reason. */
static __always_inline __u16 proxy_assign(struct __sk_buff *skb, const struct pkt *p, __u16 port)
{
	struct proxy_tcp_key k;
	struct bpf_sock_tuple t;
	struct bpf_sock *sk;
	__u32 size, v;
	long err;

	skb->mark = MARK_TO_PROXY;
	if (p->proto == IPPROTO_UDP && p->has_l4 && !p->later_fragment)
		return proxy_assign_udp(skb, p, port);
	if (!(p->proto == IPPROTO_TCP && p->has_l4 && (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN))
		return 0; /* later packets: the local route takes them to the accepted socket */
	sk = proxy_listener(p->family, port);
	if (sk) {
		bpf_sk_release(sk);
		__builtin_memset(&k, 0, sizeof(k));
		k.family = p->family;
		k.sport = p->sport;
		k.dport = p->dport;
		__builtin_memcpy(k.saddr, p->saddr, 16);
		__builtin_memcpy(k.daddr, p->daddr, 16);
		v = port;
		return bpf_map_update_elem(&proxy_tcp_divert, &k, &v, BPF_ANY) < 0 ? DROP_PROXY_SET_FAILED : 0;
	}
	/* A listener that is not registered (the DNS proxy's TCP socket, a worker of an older version):
	 * assigned here, with the TIME_WAIT caveat above. No listener at all fails closed. */
	size = proxy_local_tuple(&t, p, port);
	sk = bpf_sk_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return DROP_PROXY_LOOKUP_FAILED;
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? DROP_PROXY_SET_FAILED : 0;
}

/* sk_lookup in the proxy's netns: a SYN whose 4-tuple the tc program diverted goes to the proxy's
 * listener. Everything else is left to the normal lookup (SK_PASS, nothing selected): other agents'
 * programs on this netns run too, and a drop from any would refuse the connection. A diverted SYN
 * with no listener in the map is refused (fail closed). The entry is used once: a retransmitted SYN
 * passes tc again and is recorded again. */
static __always_inline int proxy_steer_lookup(struct bpf_sk_lookup *ctx)
{
	struct proxy_tcp_key k;
	struct bpf_sock *sk;
	__u32 *port;
	long err;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	__builtin_memset(&k, 0, sizeof(k));
	if (ctx->family == AF_INET) {
		k.family = MBR_FAMILY_IPV4;
		__builtin_memcpy(k.saddr, &ctx->remote_ip4, 4);
		__builtin_memcpy(k.daddr, &ctx->local_ip4, 4);
	} else if (ctx->family == AF_INET6) {
		k.family = MBR_FAMILY_IPV6;
		__builtin_memcpy(k.saddr, ctx->remote_ip6, 16);
		__builtin_memcpy(k.daddr, ctx->local_ip6, 16);
	} else {
		return SK_PASS;
	}
	k.sport = (__be16)ctx->remote_port; /* network byte order */
	k.dport = bpf_htons((__u16)ctx->local_port); /* host byte order */
	port = bpf_map_lookup_elem(&proxy_tcp_divert, &k);
	if (!port)
		return SK_PASS;
	sk = proxy_listener(k.family, *port & 0xffff);
	bpf_map_delete_elem(&proxy_tcp_divert, &k);
	if (!sk)
		return SK_DROP;
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
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
		sk = bpf_sk_lookup_tcp(skb, &t, proxy_local_tuple(&t, p, port), BPF_F_CURRENT_NETNS, 0);
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
