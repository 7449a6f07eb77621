/* SPDX-License-Identifier: GPL-2.0 */
/* Identity of an address (ipcache LPM trie) and the policy probe sequence (policy.h). */
#pragma once

#include "maps.h"

#define IDENTITY_WORLD 2 /* an address the ipcache does not know */

static __always_inline __u32 ipcache_identity(__u8 family, const __u8 *addr)
{
	struct ipcache_key k;
	struct ipcache_value *v;

	__builtin_memset(&k, 0, sizeof(k));
	k.prefixlen = 32 + (family == MBR_FAMILY_IPV4 ? 32 : 128);
	k.family = family;
	__builtin_memcpy(k.addr, addr, 16);
	v = bpf_map_lookup_elem(&ipcache, &k);
	return v ? v->identity : IDENTITY_WORLD;
}

/* First entry in probe order: (peer, proto, dport) (peer, proto, *) (peer, *, *) then the same for
 * any peer. At most six hash lookups, however many rules there are. */
static __always_inline struct policy_entry *policy_lookup(__u32 endpoint_id, __u32 peer, __u8 dir, __u8 proto, __be16 dport)
{
	struct policy_key k;
	struct policy_entry *e;

	__builtin_memset(&k, 0, sizeof(k));
	k.endpoint_id = endpoint_id;
	k.direction = dir;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		k.peer_identity = i ? 0 : peer;
		if (i && !peer)
			break;
		if (dport) {
			k.proto = proto;
			k.dport = dport;
			e = bpf_map_lookup_elem(&policy, &k);
			if (e)
				return e;
		}
		if (proto) {
			k.proto = proto;
			k.dport = 0;
			e = bpf_map_lookup_elem(&policy, &k);
			if (e)
				return e;
		}
		k.proto = 0;
		k.dport = 0;
		e = bpf_map_lookup_elem(&policy, &k);
		if (e)
			return e;
	}
	return NULL;
}
