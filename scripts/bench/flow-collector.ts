// node --import tsx scripts/bench/flow-collector.ts [ROOT] — not a test. The agent's JS time per flow
// event in its collector (enrich, count, store in the flow ring; what it does for every event it reads
// from the datapath's ring), on pod-to-pod pair records (FLOW_NEW and FLOW_END, both observation points
// in one record, as bpf/lib/events.h writes them) with the agent's real EndpointTable. ROOT: another
// checkout's tree (e.g. an extracted `git archive <commit> shared`, node_modules linked) for an A/B of
// two builds' collectors on the same machine; default this one. Run it under the bench lock.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(process.argv[2] ?? path.join(path.dirname(fileURLToPath(import.meta.url)), '../..'));
const { FlowCollector } = await import(`${root}/shared/src/flows/collector.ts`);
const { FlowRing } = await import(`${root}/shared/src/flows/ring.ts`);
const { InjectedEventSource } = await import(`${root}/shared/src/flows/source.ts`);
const { EndpointTable } = await import(`${root}/shared/src/flows/endpoints.ts`);
const { encodeTraceEvent } = await import(`${root}/shared/src/flows/event.ts`);
const eps = [1, 2].map((i) => ({
  id: i,
  identity: 1000 + i,
  labels: { app: `a${i}` },
  containerId: `c${i}`,
  hostIfName: `mbr${i}`,
  ips: [{ address: `10.77.0.${i}/24` }],
}));
const table = EndpointTable.from(eps as never);
const ctx = {
  nodeName: 'n',
  wallOffset: { seconds: 0, nanos: 0 },
  endpointById: (id: number) => table.byEndpointId(id),
  endpointByAddress: (b: Buffer, o: number, f: number) => table.byRaw(b, o, f),
  labelsOfIdentity: () => undefined,
  describeRule: () => undefined,
  peerCache: new Map(),
  ruleCache: new Map(),
};
const ring = new FlowRing(4096, 'n');
const src = new InjectedEventSource();
const c = new FlowCollector({ ring, source: src, context: ctx });
c.start();
const ev = (type: number, dir: number, ep: number) =>
  encodeTraceEvent({
    type,
    direction: dir,
    endpointId: ep,
    srcIdentity: 1001,
    dstIdentity: 1002,
    saddr: '10.77.0.1',
    daddr: '10.77.0.2',
    sport: 40000,
    dport: 8080,
    proto: 6,
    tcpFlags: 2,
  });
// A mapped-ring-like buffer: 2,000 pair records (NEW, END) back to back, 8-byte headers between.
const recs = 2000,
  stride = 8 + 192;
const big = Buffer.alloc(recs * stride);
for (let i = 0; i < recs; i++) {
  const t = i % 2 ? 3 : 1;
  Buffer.concat([ev(t, 1, 1), ev(t, 0, 2)]).copy(big, i * stride + 8);
}
const round = () => {
  for (let i = 0; i < recs; i++) c.onRecord(big, i * stride + 8, 192);
};
for (let i = 0; i < 200; i++) round();
const res: number[] = [];
for (let r = 0; r < 7; r++) {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < 250; i++) round();
  res.push(Number(process.hrtime.bigint() - t0) / (250 * recs * 2));
}
res.sort((a, b) => a - b);
console.log(
  `${root}: ns per event, median of 7 rounds of 1M: ${res[3].toFixed(1)} (min ${res[0].toFixed(1)}, max ${res[6].toFixed(1)})`,
);
c.close();
