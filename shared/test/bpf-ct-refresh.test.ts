// Conntrack lifetimes follow the traffic (BPF_PROG_TEST_RUN, root + bpffs). The datapath writes an
// entry's last-seen time only when it is more than a second old (bpf/lib/ct.h: a store on every
// packet pulls the entry's cache line between the CPUs of the two directions), so a flow that keeps
// sending must still outlive its lifetime counted from its first packet, and one that stops must not.
import t from 'tap';
import { eth, ETH_P, ipv4, PROTO, udp } from '../src/bpf/packets.ts';
import { bpfHarness, OK, requireBpf } from './lib/bpf-harness.ts';
import { setTimeout as sleep } from 'node:timers/promises';

requireBpf();

const A = {
  hostIfindex: 1,
  endpointId: 81,
  identity: 8001,
  flags: 0,
  hostMac: '02:00:00:00:51:01',
  containerMac: '02:00:00:00:51:02',
  ips: ['10.246.0.1'],
};
const SEC = 1_000_000_000n;
const LIFETIME_OTHER = 60n * SEC; // CT_LIFETIME_OTHER (bpf/lib/conntrack.h)

const h = bpfHarness({ ctMax: 64, endpoints: [A] });
const out = (dst: string, sport: number) =>
  eth(A.hostMac, A.containerMac, ETH_P.IPV4, ipv4({ src: A.ips[0], dst, proto: PROTO.UDP }, udp(sport, 53)));

t.afterEach(() => {
  h.dp.gcConntrack(process.hrtime.bigint() + 3600n * SEC); // a clean table
});

t.test('a flow that keeps sending outlives the lifetime counted from its first packet', async (t) => {
  h.dp.setGlobalConfig({ events: false, audit: false });
  t.equal(h.from(out('198.19.200.1', 5301)), OK, 'the first packet');
  const first = process.hrtime.bigint(); // the entry's last-seen time is before this
  await sleep(1200); // more than the one-second step
  t.equal(h.from(out('198.19.200.1', 5301)), OK, 'a packet 1.2 s later');
  // Half a second past the lifetime counted from the first packet: alive only if the second packet
  // moved its last-seen time (to >= first + 1.2 s).
  const last = process.hrtime.bigint();
  t.equal(h.dp.gcConntrack(first + LIFETIME_OTHER + SEC / 2n), 0, 'not expired: the later packet refreshed it');
  t.equal(h.dp.gcConntrack(last + LIFETIME_OTHER + SEC), 1, 'a lifetime after its last packet, it expires');
});

t.test('a flow that stops expires a lifetime after its last packet, not later', async (t) => {
  h.dp.setGlobalConfig({ events: false, audit: false });
  const before = process.hrtime.bigint(); // the entry's last-seen time is at least this
  t.equal(h.from(out('198.19.200.2', 5302)), OK, 'one packet');
  t.equal(h.from(out('198.19.200.2', 5302)), OK, 'another right after: last-seen may stay');
  // Read after both packets: the entry's last-seen time is at most this, however long the machine
  // took between them.
  const after = process.hrtime.bigint();
  t.equal(h.dp.gcConntrack(before + LIFETIME_OTHER - SEC), 0, 'alive before a lifetime has passed');
  t.equal(h.dp.gcConntrack(after + LIFETIME_OTHER + SEC), 1, 'expired a lifetime (+ at most the step) after its last packet');
});
