/* SPDX-License-Identifier: GPL-2.0 */
/* The DNS answer cache (shared/src/dns/answer-cache.ts writes it): a pod's UDP DNS query that the
 * policy sends to the DNS proxy is answered here, at tc ingress of its host veth, when the proxy has
 * already relayed an answer to that very question for that very endpoint and server and the answer's
 * TTL has not run out (the question byte for byte: a name in other case goes to the proxy). The query
 * is rewritten into the answer in place (the query's ID, TTLs lowered by the time the entry has been
 * stored, addresses and ports swapped, UDP checksum 0 as IPv4 allows) and handed back to the pod's
 * eth0 (bpf_redirect_peer). Like a node-local DNS cache: answers are served from the node until their
 * TTL. Each answer is reported (TRACE_DNS_CACHED, the entry's id in rule_id): the agent turns it into
 * the query and answer L7 flows the proxy would have recorded (subject to the event rate limit).
 *
 * Why it cannot answer what the proxy would refuse: an entry exists only for a query the proxy
 * allowed from that endpoint (the key holds the endpoint id, the server's address and port, the
 * header flags - RD, AD, CD - and every byte after the header as sent: the question and an EDNS record);
 * it is valid only under the generation it was stored in, which the agent bumps on every
 * policy or ipcache change (dns_cache_config), so a changed DNS rule is asked of the proxy again; it
 * expires no later than the addresses the answer taught (stored with the TTL counted from before
 * they were learned). Anything else - IPv6, IP options, fragments, answer or authority records or more
 * than one additional record in the query, a query over DNS_CACHE_QUERY_MAX bytes after the header, a
 * stale or absent entry, a disabled cache - goes to the proxy as before. */
#pragma once

#include <linux/udp.h>
#include "maps.h"
#include "parse.h"
#include "events.h"

#define DNS_CACHE_QUERY_MAX 144	  /* a query's bytes after the header: a 128-byte name, type, class, OPT */
#define DNS_CACHE_ANSWER_MAX 512  /* payload of a cached answer */
#define DNS_CACHE_TTLS 16	  /* records whose TTL is lowered on the way out */
#define DNS_CACHE_ENTRIES 8192

struct dns_cache_key {
	__u32 endpoint_id;
	__u8 family;
	__u8 qlen; /* bytes of q */
	__be16 server_port;
	__u8 server[16];
	__u8 flags[2]; /* header bytes 2-3 as sent: RD, AD, CD change what an answer may say */
	__u8 pad[2];
	__u8 q[DNS_CACHE_QUERY_MAX]; /* the bytes after the header as sent (question, EDNS), zero-padded */
};
_Static_assert(sizeof(struct dns_cache_key) == 172, "dns_cache_key layout is shared with userspace");

struct dns_cache_value {
	__u64 stored_ns;  /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the answer's arrival */
	__u64 expires_ns; /* stored_ns + the smallest TTL of its records */
	__u32 generation; /* dns_cache_config.generation when the proxy decided */
	__u32 entry_id;   /* the agent's handle (flows) */
	__u16 len;
	__u8 ttl_count;
	__u8 pad;
	__u16 ttl_off[DNS_CACHE_TTLS]; /* offsets of TTL fields in payload */
	__u32 ttl[DNS_CACHE_TTLS];     /* their values as answered (host order) */
	__u8 payload[DNS_CACHE_ANSWER_MAX];
};
_Static_assert(sizeof(struct dns_cache_value) == 640, "dns_cache_value layout is shared with userspace");

struct dns_cache_config {
	__u32 enabled;
	__u32 generation;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DNS_CACHE_ENTRIES);
	__type(key, struct dns_cache_key);
	__type(value, struct dns_cache_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_answers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dns_cache_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_cache_config SEC(".maps");

/* Queries answered here (per CPU): the agent's metrics. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_cache_hits SEC(".maps");

/* Per-CPU room for the key (too large for the stack next to the caller's). */
struct dns_cache_scratch {
	struct dns_cache_key key;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dns_cache_scratch);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_answers_scratch SEC(".maps");

#define DNS_OFF (ETH_HLEN + 20 + 8) /* IPv4 without options, UDP */

struct dns_reply_headers {
	__u8 eth[ETH_HLEN];
	__u8 pad[2];
	struct iphdr ip;
	struct udphdr udp;
};

static __always_inline __u16 csum_fold32(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* True when the query in skb was answered from the cache (then the caller returns TC_ACT_REDIRECT
 * via *verdict); false: it goes to the proxy. */
static __always_inline bool dns_cache_answer(struct __sk_buff *skb, const struct pkt *p, const struct endpoint_config *ep,
					     int *verdict)
{
	__u32 zero = 0, ifindex = skb->ifindex, dns_len, qlen, len, i, elapsed;
	struct dns_reply_headers h;
	struct event_meta m;
	struct dns_cache_config *cfg;
	struct dns_cache_scratch *s;
	struct dns_cache_value *v;
	__u8 hdr[12];
	__u16 id;
	__u64 now, *hits;
	void *data, *data_end;
	struct iphdr *ip;
	struct udphdr *udp;

	if (p->family != MBR_FAMILY_IPV4 || p->proto != IPPROTO_UDP || !p->has_l4 || p->later_fragment)
		return false;
	cfg = bpf_map_lookup_elem(&dns_cache_config, &zero);
	if (!cfg || !cfg->enabled || p->l4_off != ETH_HLEN + 20)
		return false;
	if (!linear_headers(skb, DNS_OFF, &data, &data_end))
		return false;
	ip = data + ETH_HLEN;
	udp = data + ETH_HLEN + 20;
	if (ip->frag_off & bpf_htons(0x3fff)) /* MF or an offset: a fragment */
		return false;
	dns_len = bpf_ntohs(udp->len);
	if (dns_len < 8 || skb->len != ETH_HLEN + 20 + dns_len)
		return false;
	dns_len -= 8;
	if (dns_len < 12 + 1 + 4 || dns_len > 12 + DNS_CACHE_QUERY_MAX)
		return false;
	if (bpf_skb_load_bytes(skb, DNS_OFF, hdr, sizeof(hdr)) < 0)
		return false;
	/* A standard query (QR 0, opcode 0, TC 0): one question, at most one additional record (EDNS). */
	if ((hdr[2] & 0xfa) || hdr[4] || hdr[5] != 1 || hdr[6] || hdr[7] || hdr[8] || hdr[9] || hdr[10] || hdr[11] > 1)
		return false;
	s = bpf_map_lookup_elem(&dns_answers_scratch, &zero);
	if (!s)
		return false;
	qlen = dns_len - 12;
	if (qlen < 5 || qlen > DNS_CACHE_QUERY_MAX)
		return false;
	/* As sent (no case folding: a query in other case is the proxy's), zero-padded. */
	__builtin_memset(s->key.q, 0, sizeof(s->key.q));
	if (bpf_skb_load_bytes(skb, DNS_OFF + 12, s->key.q, qlen) < 0)
		return false;
	s->key.endpoint_id = ep->endpoint_id;
	s->key.family = p->family;
	s->key.qlen = qlen;
	s->key.flags[0] = hdr[2];
	s->key.flags[1] = hdr[3];
	s->key.pad[0] = 0;
	s->key.pad[1] = 0;
	s->key.server_port = p->dport;
	__builtin_memset(s->key.server, 0, sizeof(s->key.server));
	__builtin_memcpy(s->key.server, p->daddr, 4);
	v = bpf_map_lookup_elem(&dns_answers, &s->key);
	if (!v)
		return false;
	now = bpf_ktime_get_ns();
	if (v->generation != cfg->generation || now >= v->expires_ns || now < v->stored_ns)
		return false;
	len = v->len;
	if (len < dns_len || len > DNS_CACHE_ANSWER_MAX)
		return false;
	elapsed = (now - v->stored_ns) / 1000000000ULL;
	id = *(__u16 *)hdr;

	/* The reply's headers, from the query's. */
	__builtin_memset(&h, 0, sizeof(h));
	if (bpf_skb_load_bytes(skb, 0, h.eth, ETH_HLEN) < 0)
		return false;
	for (i = 0; i < ETH_ALEN; i++) {
		__u8 t = h.eth[i];

		h.eth[i] = h.eth[ETH_ALEN + i];
		h.eth[ETH_ALEN + i] = t;
	}
	h.ip.version = 4;
	h.ip.ihl = 5;
	h.ip.tot_len = bpf_htons(20 + 8 + len);
	h.ip.frag_off = bpf_htons(0x4000); /* DF */
	h.ip.ttl = 64;
	h.ip.protocol = IPPROTO_UDP;
	__builtin_memcpy(&h.ip.saddr, p->daddr, 4);
	__builtin_memcpy(&h.ip.daddr, p->saddr, 4);
	h.ip.check = csum_fold32(bpf_csum_diff(0, 0, (__be32 *)&h.ip, sizeof(h.ip), 0));
	h.udp.source = p->dport;
	h.udp.dest = p->sport;
	h.udp.len = bpf_htons(8 + len);
	h.udp.check = 0; /* none: IPv4 allows it, and the reply never leaves the node */

	if (bpf_skb_change_tail(skb, DNS_OFF + len, 0) < 0)
		return false;
	/* From here the query is gone: a failure drops it (the client asks again). */
	*verdict = TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, 0, h.eth, ETH_HLEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &h.ip, sizeof(h.ip) + sizeof(h.udp), 0) < 0 ||
	    bpf_skb_store_bytes(skb, DNS_OFF, v->payload, len, 0) < 0 ||
	    bpf_skb_store_bytes(skb, DNS_OFF, &id, sizeof(id), 0) < 0)
		return true;
	for (i = 0; i < DNS_CACHE_TTLS; i++) {
		__u32 ttl;

		if (i >= v->ttl_count)
			break;
		ttl = v->ttl[i] > elapsed ? v->ttl[i] - elapsed : 0;
		ttl = bpf_htonl(ttl);
		if (bpf_skb_store_bytes(skb, DNS_OFF + v->ttl_off[i], &ttl, sizeof(ttl), 0) < 0)
			return true;
	}
	__builtin_memset(&m, 0, sizeof(m));
	m.type = TRACE_DNS_CACHED;
	m.verdict = TRACE_VERDICT_FORWARDED;
	m.direction = POLICY_DIR_EGRESS;
	m.flags = TRACE_F_PROXY;
	m.src_identity = ep->identity;
	m.rule_id = v->entry_id;
	emit_event(p, &m, ep, NULL);
	hits = bpf_map_lookup_elem(&dns_cache_hits, &zero);
	if (hits)
		*hits += 1;
	count_endpoint_rx(ep->endpoint_id, skb->len);
	*verdict = bpf_redirect_peer(ifindex, 0);
	return true;
}
