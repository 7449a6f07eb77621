/* SPDX-License-Identifier: GPL-2.0 */
/* Every map of the datapath. All are pinned by name: the loader points each pin path at
 * <pinDir>/<map name> before load, so a restarted agent (or a new object version with the same
 * layout) reuses the live maps and forwarding state survives. Layout changes therefore need a new
 * map name or an explicit migration; the _Static_asserts guard the layouts userspace encodes.
 * Sizes are deliberately modest. The conntrack hash is sized by the agent (--ct-max) before load. */
#pragma once

#include "common.h"
#include "conntrack.h"
#include "drop.h"
#include "fragments.h"
#include "policy.h"
#include "trace.h"

#define MAX_ENDPOINTS 4096
#define MAX_LOCAL_IPS 8192 /* an IPv4 and an IPv6 address per endpoint */
#define MAX_IPCACHE 65536  /* LPM trie is not preallocated: memory follows the stored prefixes */
#define MAX_POLICY 131072  /* not preallocated: ~80 B per stored entry; 10k rules x a few endpoints */
#define MAX_CONNTRACK 65536 /* the default; the loader sets the agent's --ct-max before load */
#define MAX_ENDPOINT_IDS 65536 /* endpoint ids are 1..65535; slot 0 of the ct_* counters is the node total */
#define MAX_FRAGMENTS 8192  /* datagrams being fragmented at once (LRU: a lost entry drops one datagram) */
/* 4 MiB (~40k events): the datapath's full connection rate (~15k conn/s, four events each) for the
 * ~0.5 s the agent's reader may be held up on a loaded node. 1 MiB lost events at that rate. */
#define EVENTS_RING_BYTES (1 << 22)

/* Per-endpoint configuration, keyed by the host-side veth ifindex (what tc programs see).
 * flags: the low byte belongs to policy (EP_F_* in policy.h), written by the policy engine; the
 * address bits (EP_F_HAS_*) by the endpoint writer. The addresses are what anti-spoofing compares a
 * packet's source with: one compare against the value looked up anyway. */
struct endpoint_config {
	__u32 endpoint_id;
	__u32 identity;
	__u32 flags;
	__u8 host_mac[ETH_ALEN];
	__u8 container_mac[ETH_ALEN];
	__u32 ifindex;
	__u32 policy_revision;
	__u8 ipv4[4];      /* its IPv4 address (EP_F_HAS_IPV4) */
	__u8 ipv6[16];     /* its IPv6 address (EP_F_HAS_IPV6) */
	__u8 gateway6[16]; /* its IPv6 gateway: the one global address NDP may name on its link */
	__u32 reserved[3]; /* room for later fields without changing value_size (pinned map reuse) */
};
_Static_assert(sizeof(struct endpoint_config) == 80, "endpoint_config layout is shared with userspace");

/* endpoint_config.flags bits owned by the endpoint writer (above the policy byte). */
#define EP_F_HAS_IPV4 (1U << 8)
#define EP_F_HAS_IPV6 (1U << 9)
/* More than one address of a family: a source that is not ipv4/ipv6 is looked up in local_endpoints. */
#define EP_F_EXTRA_ADDRS (1U << 10)

/* Where to deliver a packet for a local address: enough to redirect without another lookup. */
struct local_endpoint {
	__u32 host_ifindex;
	__u32 endpoint_id;
	__u8 container_mac[ETH_ALEN];
	__u8 host_mac[ETH_ALEN];
};
_Static_assert(sizeof(struct local_endpoint) == 20, "local_endpoint layout is shared with userspace");

/* rx = received by the container, tx = sent by the container. */
struct endpoint_counters_value {
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 tx_packets;
	__u64 tx_bytes;
};

struct ipcache_key {
	__u32 prefixlen; /* LPM bits, counted over family+pad+addr: 32 + address prefix length */
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};
_Static_assert(sizeof(struct ipcache_key) == 24, "ipcache_key layout is shared with userspace");

struct ipcache_value {
	__u32 identity;
	__u32 flags;
};

/* Agent-wide switches, one entry (key 0). Zero (a fresh map) = events off, no audit. */
#define CFG_F_EVENTS (1U << 0) /* emit flow/drop events (--flow-events) */
#define CFG_F_AUDIT (1U << 1)  /* agent-wide policy audit mode (--policy-audit-mode) */

struct datapath_config {
	__u32 flags;
	__u32 events_per_sec; /* per CPU token bucket rate; 0 = unlimited */
	__u32 events_burst;   /* bucket size in events; 0 = events_per_sec */
	__u32 ct_endpoint_max; /* conntrack entries one endpoint may own; 0 = no per-endpoint limit */
	__u32 reserved[4];
};
_Static_assert(sizeof(struct datapath_config) == 32, "datapath_config layout is shared with userspace");

/* Per-CPU token bucket state of the event rate limit (in nanoseconds of credit). */
struct event_bucket {
	__u64 credit_ns;
	__u64 last_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct endpoint_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LOCAL_IPS);
	__type(key, struct ip_key);
	__type(value, struct local_endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} local_endpoints SEC(".maps");

/* Indexed by endpoint id (1..MAX_ENDPOINTS-1, shared/src/endpoint/ids.ts; slot 0 unused): an array
 * lookup, inlined by the verifier, instead of hashing the ifindex on every counted packet (the per-CPU
 * hash it replaces: 5-9 ns more per packet in BPF_PROG_TEST_RUN). Per-CPU so the hot path needs no
 * atomics; userspace sums the CPUs and zeroes a slot when it gives the id to a new endpoint (an array
 * has no delete). Sized like endpoints_cfg: the ids stay below it, so it costs what the hash did.
 * Named anew: the old endpoint_counters pin (a hash) is retired by the loader (layout.ts). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct endpoint_counters_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ep_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_IPCACHE);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* required for LPM tries */
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_POLICY);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy SEC(".maps");

/* A plain hash, not an LRU: a full table refuses new flows (fail closed) instead of evicting
 * someone's established ones; expired entries are collected by the agent (bpf/README.md). */
struct {
#ifdef MBR_CT_LRU /* measurement builds only: the wave-1 table */
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
#else
	__uint(type, BPF_MAP_TYPE_HASH);
#endif
#ifdef MBR_CT_NO_PREALLOC /* measurement builds only (bpf/README.md: why preallocated) */
	__uint(map_flags, BPF_F_NO_PREALLOC);
#endif
	__uint(max_entries, MAX_CONNTRACK);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

/* Ports that opened a flow here (a TCP SYN's or a UDP flow's destination port when its entry was
 * made): one bit each, 64 to a slot (index = port / 64). Only the order of conntrack's two lookups
 * follows them (ct_reply_likely: a packet from such a port to one that is not looks like a reply), never
 * a verdict, so bits are never cleared and anyone may set one. An array: the lookup is arithmetic. */
#define CT_SERVER_PORT_SLOTS 1024
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CT_SERVER_PORT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct_server_ports SEC(".maps");

/* Conntrack entries per owning endpoint (index = endpoint id; 0 = the node), in two halves so that
 * each has one writer: ct_owned is the datapath's (atomic adds: +1 per entry created, -1 per entry
 * it deletes), ct_reclaimed the agent's (entries its GC, flushes and revocations deleted). An
 * endpoint owns ct_owned - ct_reclaimed entries. Arrays: the lookups compile to address arithmetic. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_ENDPOINT_IDS);
	__type(key, __u32);
	__type(value, __s64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct_owned SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_ENDPOINT_IDS);
	__type(key, __u32);
	__type(value, __s64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct_reclaimed SEC(".maps");

/* The L4 ports of datagrams being fragmented, so later fragments (which carry no L4 header) meet
 * conntrack and policy as their first fragment did (layout in parse.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FRAGMENTS);
	__type(key, struct frag_key);
	__type(value, struct frag_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fragments SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RING_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

/* Events not delivered: ring buffer reserve failures plus rate-limited ones. Same definition as the
 * flows module's synthetic producer (shared/src/flows/synthetic), which reuses this pin. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events_lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_bucket);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} event_bucket SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct datapath_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} datapath_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_REASON_MAX);
	__type(key, __u32); /* enum drop_reason */
	__type(value, struct drop_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} drop_counters SEC(".maps");

static __always_inline const struct datapath_config *global_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&datapath_config, &zero);
}
