/* SPDX-License-Identifier: GPL-2.0 */
/* Drop reasons and the drop counter layout. The numbers are Hubble's DropReason codes (flow.proto;
 * Cilium's bpf/lib/drop_reasons.h uses their negatives), so a flow needs no translation; the names are
 * ours where the issue tracker knows them by another name (SOURCE_SPOOFED = Hubble's INVALID_SOURCE_IP).
 * Numbers are ABI: userspace names them (shared/src/flows/event.ts DROP_REASONS) and the drop_counters
 * map is indexed by them. Membrane's first numbering (1 = policy denied) is gone from the datapath;
 * userspace still names 1 for events recorded before. */
#pragma once

#include "common.h"

enum drop_reason {
	DROP_REASON_UNKNOWN = 0,
	DROP_INVALID_SOURCE_MAC = 130,   /* the frame's source MAC is not the endpoint's */
	DROP_SOURCE_SPOOFED = 132,       /* IPv4/IPv6 source (or ARP sender) is not the endpoint's */
	DROP_POLICY_DENIED = 133,        /* policy: a deny rule, or default deny */
	DROP_INVALID_PACKET = 134,       /* malformed IP header */
	DROP_CT_TRUNCATED = 135,         /* L4 header missing or cut short (also a first fragment without it) */
	DROP_UNSUPPORTED_L3 = 139,       /* neither IPv4, IPv6 nor ARP from a container */
	DROP_CT_INSERT_FAILED = 155,     /* conntrack full, or the endpoint used its share */
	DROP_NO_TUNNEL_ENDPOINT = 160,   /* into the tunnel, but no node owns the destination (or no tunnel key) */
	DROP_INVALID_IPV6_EXTHDR = 156,  /* an IPv6 header chain longer than the parser walks */
	DROP_NO_CONFIG = 165,            /* an interface with our program but no endpoint configuration */
	DROP_UNSUPPORTED_L2 = 166,       /* not IP through the tunnel */
	DROP_UNKNOWN_SENDER = 172,       /* a tunnel packet whose outer source is no node of the cluster */
	DROP_FRAG_NOT_FOUND = 175,       /* a later fragment whose first fragment was not seen */
	DROP_FORBIDDEN_ICMPV6 = 176,     /* NDP/MLD that does not stay on the endpoint's own link */
	DROP_PROXY_LOOKUP_FAILED = 178,  /* a flow for the L7 proxy, and no proxy listens (fail closed) */
	DROP_PROXY_SET_FAILED = 179,     /* the packet could not be handed to the L7 proxy */
	DROP_INVALID_VNI = 183,          /* a tunnel packet whose VNI is no identity */
	DROP_REASON_MAX = 256,           /* size of drop_counters */
};

struct drop_counter {
	__u64 packets;
	__u64 bytes;
};
