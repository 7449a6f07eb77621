// Endpoint counters (ep_counters, an array slot per endpoint id) belong to the endpoint whose config
// names the id: removing a stale config entry (pruneDatapath: an interface no endpoint has, its
// ifindex perhaps reused by a foreign interface) leaves the slot alone, since a live endpoint may have
// been given that id since; the id's next owner starts from zero because its upsert zeroes the slot.
// BPF_PROG_TEST_RUN on lo (ifindex 1); root and bpffs needed, skipped otherwise.

import t from 'tap';
import { eth, ETH_P, ipv4, PROTO, udp } from '../src/bpf/packets.ts';
import { bpfHarness, OK, requireBpf } from './lib/bpf-harness.ts';

requireBpf();

const h = bpfHarness();
const base = { identity: 1001, flags: 0, hostMac: '02:00:00:00:0d:01', containerMac: '02:00:00:00:0d:02' };
const ID = 31;
// A crashed delete left this config behind: its interface is gone, its id was freed and given again.
const STALE = { ...base, hostIfindex: 900031, endpointId: ID, ips: ['10.251.0.31'] };
// The live endpoint holding the id now, on lo: to_container counts its packets.
const LIVE = { ...base, hostIfindex: 1, endpointId: ID, ips: ['10.251.0.32'] };
const NEXT = { ...base, hostIfindex: 900033, endpointId: ID, ips: ['10.251.0.33'] };

const toLive = () =>
  eth(
    base.containerMac,
    base.hostMac,
    ETH_P.IPV4,
    ipv4({ src: '10.251.0.99', dst: LIVE.ips[0], proto: PROTO.UDP }, udp(40000, 53)),
  );

t.test('removing a stale config entry leaves the counters of the live endpoint that holds its id now', async (t) => {
  t.teardown(() => {
    for (const e of [STALE, LIVE, NEXT]) h.dp.removeEndpoint(e.hostIfindex, e.ips);
  });
  h.dp.upsertEndpoint(STALE);
  h.dp.upsertEndpoint(LIVE);
  for (let i = 0; i < 3; i++) t.equal(h.to(toLive()), OK, `packet ${i + 1} to the live endpoint passes`);
  t.equal(h.dp.counters(LIVE.hostIfindex)?.rxPackets, 3n, 'counted: 3 packets');
  h.dp.removeEndpoint(STALE.hostIfindex, []); // what pruneDatapath does with it
  t.equal(h.dp.counters(STALE.hostIfindex), null, 'the stale entry is gone');
  t.equal(h.dp.counters(LIVE.hostIfindex)?.rxPackets, 3n, "the live endpoint's counts stay");

  // The id's next owner, after the live endpoint is removed: its upsert starts it from zero.
  h.dp.removeEndpoint(LIVE.hostIfindex, LIVE.ips);
  h.dp.upsertEndpoint(NEXT);
  t.same(
    h.dp.counters(NEXT.hostIfindex),
    { rxPackets: 0n, rxBytes: 0n, txPackets: 0n, txBytes: 0n },
    'the next owner starts at zero',
  );
});
