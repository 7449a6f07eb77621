/* SPDX-License-Identifier: GPL-2.0 */
/* Which of a packet's two conntrack lookups (as a reply, as a forward packet) ct_lookup (ct.h) runs
 * first: a guess from the TCP flags and the ports that opened flows on this node (ct_server_ports,
 * maps.h). It orders the lookups only; the verdict never depends on it. */
#pragma once

#include "maps.h"
#include "parse.h"

/* Is the port (network order) one that opened a flow on this node (ct_server_ports)? */
static __always_inline bool ct_server_port(__be16 port)
{
	__u32 h = bpf_ntohs(port), slot = h >> 6;
	__u64 *w = bpf_map_lookup_elem(&ct_server_ports, &slot);

	return w && ((*w >> (h & 63)) & 1);
}

/* Marks the destination port of a TCP SYN or UDP datagram that just made an entry. Read first: the
 * word is shared by every CPU, and after the first flow to a port nothing changes. */
static __always_inline void ct_mark_server_port(const struct pkt *p)
{
	__u32 h, slot;
	__u64 *w, bit;

	if (!p->has_l4 || !(tcp_syn_only(p) || p->proto == IPPROTO_UDP))
		return;
	h = bpf_ntohs(p->dport);
	slot = h >> 6;
	bit = 1ULL << (h & 63);
	w = bpf_map_lookup_elem(&ct_server_ports, &slot);
	if (w && !(*w & bit))
		__sync_fetch_and_or(w, bit);
}

/* Does the packet look like an answer? A SYN-ACK; a TCP/UDP packet from a port that opened flows here
 * to one that did not (a server answering a client); between two such ports or two others, a source
 * port below the destination port (a server answering an ephemeral port). Only the order of the two
 * lookups follows it (ct_lookup): a wrong guess costs one lookup, never a different verdict. The port
 * order alone guessed wrong for every packet of a connection whose client port was below its server
 * port: ~45 % of the cross-node bench's connections (ports 1024-65000 against a server port of
 * 20000-40000), each packet paying a missed bucket walk. */
static __always_inline bool ct_reply_likely(const struct pkt *p)
{
	bool s, d;

	if (!p->has_l4)
		return false;
	if (p->proto == IPPROTO_TCP) {
		if ((p->tcp_flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK))
			return true;
		if (p->tcp_flags & TCP_SYN)
			return false;
	} else if (p->proto != IPPROTO_UDP) {
		return false;
	}
#ifdef MBR_NO_PORT_HINT /* measurement builds only: the port order alone */
	return bpf_ntohs(p->sport) < bpf_ntohs(p->dport);
#endif
	s = ct_server_port(p->sport);
	d = ct_server_port(p->dport);
	if (s != d)
		return s;
	return bpf_ntohs(p->sport) < bpf_ntohs(p->dport);
}
