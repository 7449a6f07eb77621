// SPDX-License-Identifier: GPL-2.0
/* Synthetic flow-event producer for tests and the flows benchmark (never attached to an interface).
 * BPF_PROG_TEST_RUN feeds it a 96-byte struct trace_event as the "packet"; each run copies it into
 * the `events` ring buffer, stamped with bpf_ktime_get_ns and a running sequence number in `len`,
 * exactly as the datapath would: adaptive wake-up (flags 0), and a reserve failure counts in `events_lost`.
 * With test_run's repeat count one syscall emits thousands of events, which lets the agent's reader
 * be driven far beyond what real traffic on a 2-core machine can produce. The maps are reused from
 * the agent's pins (bpf_map__reuse_fd) or created fresh for unit tests. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#define TRACE_EVENT_SIZE 96

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} events_lost SEC(".maps");

/* A sequence number per CPU, so a test can tell which events arrived. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} seq SEC(".maps");

SEC("tc")
int produce(struct __sk_buff *skb)
{
	__u32 zero = 0;
	__u64 *lost, *n;
	__u8 *e;

	e = bpf_ringbuf_reserve(&events, TRACE_EVENT_SIZE, 0);
	if (!e) {
		lost = bpf_map_lookup_elem(&events_lost, &zero);
		if (lost)
			*lost += 1;
		return TC_ACT_OK;
	}
	if (bpf_skb_load_bytes(skb, 0, e, TRACE_EVENT_SIZE) < 0) {
		bpf_ringbuf_discard(e, BPF_RB_NO_WAKEUP);
		return TC_ACT_OK;
	}
	*(__u64 *)e = bpf_ktime_get_ns();
	n = bpf_map_lookup_elem(&seq, &zero);
	if (n) {
		*n += 1;
		*(__u32 *)(e + 36) = (__u32)*n; /* the len field carries the sequence */
	}
	bpf_ringbuf_submit(e, 0);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
