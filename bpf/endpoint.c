// SPDX-License-Identifier: GPL-2.0
/* Membrane per-endpoint tc datapath, attached to both hooks of every host-side veth:
 *   from_container: tc ingress of the host veth (packets the container sends)
 *   to_container:   tc egress of the host veth (packets the host stack delivers to the container)
 * One loaded copy of each program serves every endpoint; the endpoint is found by skb->ifindex.
 *
 * Pod-to-pod traffic on this node is short-cut: from_container looks the destination up in
 * local_endpoints, does what a router would (TTL/hop-limit decrement, L2 rewrite) and hands the
 * packet straight to the destination container's eth0 with bpf_redirect_peer. That skips the host
 * forwarding path and is what beats plain veth routing in the measurements. Everything else goes
 * up the host stack unchanged. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/counters.h"

/* The TTL and protocol bytes form one 16-bit word of the IPv4 header checksum. */
union ttl_proto_word {
	__u16 word;
	__u8 bytes[2];
};

/* Rewrite L2 like a router would: from the destination's host veth to the destination container.
 * Needed for pkt_type on kernels before 6.15 and so the container sees sane MACs. */
static __always_inline int rewrite_l2(struct __sk_buff *skb, const struct local_endpoint *dst)
{
	__u8 macs[2 * ETH_ALEN];

	__builtin_memcpy(macs, dst->container_mac, ETH_ALEN);
	__builtin_memcpy(macs + ETH_ALEN, dst->host_mac, ETH_ALEN);
	return bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0);
}

static __always_inline int deliver_to_local(struct __sk_buff *skb, const struct local_endpoint *dst)
{
	if (rewrite_l2(skb, dst) < 0)
		return TC_ACT_OK; /* let the stack route it rather than drop */
	count_endpoint_rx(dst->host_ifindex, skb->len);
	/* Only valid from tc ingress, which is where from_container runs. */
	return bpf_redirect_peer(dst->host_ifindex, 0);
}

static __always_inline int forward_ipv4(struct __sk_buff *skb, __u32 src_ifindex)
{
	struct ip_key key;
	union ttl_proto_word old_word, new_word;
	struct local_endpoint *dst;
	void *data, *data_end;
	struct iphdr *ip;

	if (!linear_headers(skb, ETH_HLEN + sizeof(*ip), &data, &data_end))
		return TC_ACT_OK;
	ip = data + ETH_HLEN;

	/* Built field by field: an initialiser would become a .rodata map the loader must manage. */
	__builtin_memset(&key, 0, sizeof(key));
	key.family = MBR_FAMILY_IPV4;
	__builtin_memcpy(key.addr, &ip->daddr, sizeof(ip->daddr));
	dst = bpf_map_lookup_elem(&local_endpoints, &key);
	if (!dst || dst->host_ifindex == src_ifindex)
		return TC_ACT_OK;
	/* Expiring packets go to the stack, which drops them and sends ICMP time exceeded. */
	if (ip->ttl <= 1)
		return TC_ACT_OK;

	old_word.bytes[0] = ip->ttl;
	old_word.bytes[1] = ip->protocol;
	new_word.bytes[0] = ip->ttl - 1;
	new_word.bytes[1] = ip->protocol;
	ip->ttl = new_word.bytes[0];
	/* Incremental checksum update over the word as it sits in memory: byte-order agnostic. */
	if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old_word.word,
				new_word.word, sizeof(__u16)) < 0)
		return TC_ACT_SHOT; /* TTL already rewritten: a packet with a bad checksum must not leave */
	return deliver_to_local(skb, dst);
}

static __always_inline int forward_ipv6(struct __sk_buff *skb, __u32 src_ifindex)
{
	struct ip_key key;
	struct local_endpoint *dst;
	void *data, *data_end;
	struct ipv6hdr *ip6;

	if (!linear_headers(skb, ETH_HLEN + sizeof(*ip6), &data, &data_end))
		return TC_ACT_OK;
	ip6 = data + ETH_HLEN;

	__builtin_memset(&key, 0, sizeof(key));
	key.family = MBR_FAMILY_IPV6;
	__builtin_memcpy(key.addr, &ip6->daddr, sizeof(ip6->daddr));
	dst = bpf_map_lookup_elem(&local_endpoints, &key);
	if (!dst || dst->host_ifindex == src_ifindex)
		return TC_ACT_OK;
	if (ip6->hop_limit <= 1)
		return TC_ACT_OK; /* the stack sends ICMPv6 time exceeded */
	ip6->hop_limit--; /* IPv6 has no header checksum */
	return deliver_to_local(skb, dst);
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;

	count_endpoint_tx(ifindex, skb->len);
	switch (skb->protocol) {
	case bpf_htons(ETH_P_IP):
		return forward_ipv4(skb, ifindex);
	case bpf_htons(ETH_P_IPV6):
		return forward_ipv6(skb, ifindex);
	default:
		return TC_ACT_OK; /* ARP and friends: the host answers (proxy_arp) */
	}
}

SEC("tc")
int to_container(struct __sk_buff *skb)
{
	count_endpoint_rx(skb->ifindex, skb->len);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
