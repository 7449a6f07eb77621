/* SPDX-License-Identifier: GPL-2.0 */
/* Conntrack layout (logic in ct.h). One entry per flow and per enforcement point, in a plain hash:
 * a full table (or an endpoint over its share) refuses new flows and never evicts established ones.
 *
 * The key is the flow's tuple as its first packet had it, plus the scope: whose policy admitted it
 * (CT_SCOPE_EGRESS: the sending endpoint's egress; CT_SCOPE_INGRESS: the receiving endpoint's
 * ingress). Traffic that passes two points in separate program runs keeps an entry per point, so an
 * entry made at the sender's egress never lets a packet skip the receiver's ingress policy; pod-to-pod
 * traffic through redirect_peer, decided at both points in one run, has one CT_SCOPE_LOCAL entry.
 * A packet is a reply when the reversed tuple exists in the other scope (LOCAL: the same scope).
 *
 * An entry is bound to the endpoint that created it (ifindex; LOCAL: also the receiver's
 * peer_ifindex): it matches only at that endpoint's hooks, a reply only at its pair. An entry the
 * agent revoked (CT_F_REVOKED: a policy change denies the flow) drops the flow's packets: its
 * initiator's packets are checked as a new flow again, its replies are dropped.
 *
 * Lesson from the measurements: a SYN on an entry that is not a live connection (closing, closed,
 * expired, or another ISN) must start a new flow, hence tcp_isn, state and timestamps in the entry. */
#pragma once

#include "common.h"

#define CT_SCOPE_INGRESS 0 /* = POLICY_DIR_INGRESS */
#define CT_SCOPE_EGRESS 1  /* = POLICY_DIR_EGRESS */
/* Pod-to-pod through redirect_peer: both enforcement points (the sender's egress and the receiver's
 * ingress) are decided in one program run, so one entry stands for both: half the lookups, inserts
 * and deletes per connection. Its reply is the reversed tuple in the same scope. */
#define CT_SCOPE_LOCAL 2

#define CT_DIR_FORWARD 0
#define CT_DIR_REPLY 1

enum ct_state {
	CT_STATE_NEW = 0,         /* TCP: SYN seen, no reply yet */
	CT_STATE_ESTABLISHED = 1, /* TCP: reply seen; other protocols: always */
	CT_STATE_CLOSING = 2,     /* FIN seen */
	CT_STATE_CLOSED = 3,      /* RST seen */
};

#define CT_F_AUDIT (1 << 0)        /* admitted by audit mode (policy would have dropped it) */
#define CT_F_END_REPORTED (1 << 1) /* FLOW_END already emitted */
#define CT_F_REDIRECTED (1 << 2)   /* pod-to-pod via redirect_peer */
#define CT_F_REVOKED (1 << 3)      /* set by the agent: the policy no longer admits the flow */
#define CT_F_PROXY (1 << 4)        /* diverted to the L7 proxy at proxy_port (proxy.h) */
#define CT_F_TUNNEL (1 << 5)       /* the peer's identity came with the packet (a tunnel's VNI), not from its address */
/* ct_entry.fin_acked bits: the FIN of the flow's forward (reply) direction has been acknowledged by
 * the other side (ct_update); the connection is done when both are. */
#define CT_FIN_ACKED_FWD (1U << 0)
#define CT_FIN_ACKED_REPLY (1U << 1)

/* Lifetimes since the last packet: an expired entry counts as absent. */
#define CT_LIFETIME_TCP_SYN (60ULL * 1000000000ULL)
#define CT_LIFETIME_TCP (21600ULL * 1000000000ULL) /* 6 h, like Cilium */
#define CT_LIFETIME_TCP_CLOSING (10ULL * 1000000000ULL)
#define CT_LIFETIME_OTHER (60ULL * 1000000000ULL)
/* last_seen_ns is written when it is older than this (ct_update): expiry is exact to a second. */
#define CT_LAST_SEEN_STEP_NS 1000000000ULL

/* MBR_CT_KEY16, measurement builds only: IPv4 tuples in a 16-byte key instead of 40 (what the hash
 * and compare of a shorter key save; scripts/bench/tunnel-lookup-testrun.ts). The agent's walks misread
 * such a table: run it with a long --conntrack-gc-interval. ICMP errors are never related then. */
#ifdef MBR_CT_KEY16
#define CT_ADDR_LEN 4
#define CT_KEY16 1
#else
#define CT_ADDR_LEN 16
#define CT_KEY16 0
#endif

struct ct_key {
	__u8 family; /* MBR_FAMILY_IPV4 / MBR_FAMILY_IPV6 */
	__u8 proto;
	__u8 scope; /* CT_SCOPE_* */
	__u8 pad;
	__be16 sport; /* ICMP echo: the identifier in both ports */
	__be16 dport;
	__u8 saddr[CT_ADDR_LEN];
	__u8 daddr[CT_ADDR_LEN];
};
#ifndef MBR_CT_KEY16
_Static_assert(sizeof(struct ct_key) == 40, "ct_key layout is shared with userspace");
#endif

struct ct_entry {
	__u64 created_ns;
	__u64 last_seen_ns;
	__u64 packets[2]; /* indexed by CT_DIR_*; plain adds: approximate when CPUs race */
	__u64 bytes[2];
	__u32 src_identity;
	__u32 dst_identity;
	__u32 tcp_isn; /* TCP while NEW; from the flow's first FIN on: that FIN's segment's sequence number */
	__u8 tcp_flags_seen[2];
	__u8 state; /* enum ct_state */
	__u8 flags; /* CT_F_* */
	__u32 rule_id;     /* policy rule that admitted the flow (0 = none); LOCAL: the sender's egress */
	__u32 endpoint_id; /* whose policy (the scope's endpoint; LOCAL: the sender) */
	__u32 ifindex;     /* that endpoint's host interface */
	__u32 rule_id_ingress; /* LOCAL: the receiver's ingress rule */
	__u32 peer_ifindex;     /* LOCAL: the receiver's host interface; else 0 */
	__u32 peer_endpoint_id; /* LOCAL: the receiver; else 0 */
	__be16 policy_port;     /* the port the policy was asked about (ICMP: 0x100 | type), for revalidation */
	__u16 proxy_port;       /* CT_F_PROXY: the L7 proxy's port (host order) */
	__u32 fin_acked;        /* CT_FIN_ACKED_*, set with atomic ORs: both ends' last ACKs may run at once */
};
_Static_assert(sizeof(struct ct_entry) == 96, "ct_entry layout is shared with userspace");
_Static_assert(__builtin_offsetof(struct ct_entry, policy_port) % 8 == 0 &&
		       __builtin_offsetof(struct ct_entry, fin_acked) == __builtin_offsetof(struct ct_entry, policy_port) + 4,
	       "ct_fin_acked ORs fin_acked through the 64-bit word it shares with policy_port and proxy_port");
