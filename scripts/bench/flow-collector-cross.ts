// Not a test: the agent's JavaScript time per flow event for a cross-node connection's events, one
// event per ring record (FLOW_NEW, FLOW_END), one end a local endpoint and the other a remote identity
// (peer cache), as each node of bench:cross-node sees them; the records sit at the stride the kernel
// ring gives them (8-byte header + 96) and are handed over as the reader does, in spans of up to 64 KiB
// (onSpan; ONE=1: each record on its own, onRecord), and the flow ring has the agent's default size
// (4096), the endpoint table's version set (the agent's EnrichMemo reuses lookups; NOMEMO=1: unset). Run it
// bundled, as the agent runs (through tsx every imported constant is a getter and the loop costs
// several times more), CPU time, median and minimum of 9 rounds:
//   npx esbuild scripts/bench/flow-collector-cross.ts --bundle --platform=node --format=esm \
//     --external:koffi --outfile=dist/fcc.mjs && node dist/fcc.mjs
// An A/B: bundle it in each checkout and alternate the two, several times (the minimum moves least
// with the machine's load). STUB=push,stats replaces the flow ring's push and/or the metrics counters
// with nothing (where the time goes: on 3277af8, push ~115 of ~200 ns, counters ~15).
import { FlowCollector } from '../../shared/src/flows/collector.ts';
import { FlowRing, MAX_APPEND_BYTES } from '../../shared/src/flows/ring.ts';
import { InjectedEventSource } from '../../shared/src/flows/source.ts';
import { EndpointTable } from '../../shared/src/flows/endpoints.ts';
import { encodeTraceEvent } from '../../shared/src/flows/event.ts';
import { writeHostU32 } from '../../shared/src/net/index.ts';

const table = EndpointTable.from([
  { id: 1, identity: 1001, labels: { app: 'a1' }, containerId: 'c1', hostIfName: 'mbr1', ips: [{ address: '10.77.1.2/24' }] },
] as never);
const ctx = {
  nodeName: 'n',
  wallOffset: { seconds: 0, nanos: 0 },
  endpointById: (id: number) => table.byEndpointId(id),
  endpointByAddress: (b: Buffer, o: number, f: number) => table.byRaw(b, o, f),
  labelsOfIdentity: (id: number) => (id === 2002 ? { app: 'server' } : undefined),
  describeRule: () => undefined,
  peerCache: new Map(),
  ruleCache: new Map(),
  version: process.env.NOMEMO ? undefined : 0,
};
const ring = new FlowRing(4096, 'n');
const src = new InjectedEventSource();
const c = new FlowCollector({ ring, source: src, context: ctx });
c.start();
const STUB = process.env.STUB ?? '';
if (STUB.includes('push')) ring.pushAt = () => undefined;
if (STUB.includes('stats')) c.stats.recordRaw = () => undefined;
const recs = 4096,
  stride = 8 + 96;
const big = Buffer.alloc(recs * stride);
for (let i = 0; i < recs; i++) {
  writeHostU32(big, i * stride, 96);
  encodeTraceEvent({
    tsNs: 1e12 + i * 1000,
    type: i % 2 ? 3 : 1,
    direction: 1,
    endpointId: 1,
    srcIdentity: 1001,
    dstIdentity: 2002,
    saddr: '10.77.1.2',
    daddr: '10.77.2.2',
    sport: 40000 + (i >> 1),
    dport: 8080,
    proto: 6,
    tcpFlags: 2,
  }).copy(big, i * stride + 8);
}
const span = Math.floor(MAX_APPEND_BYTES / stride) * stride;
const round = process.env.ONE
  ? () => {
      for (let i = 0; i < recs; i++) c.onRecord(big, i * stride + 8, 96);
    }
  : () => {
      for (let o = 0; o < big.length; o += span) c.onSpan(big, o, Math.min(span, big.length - o));
    };
for (let i = 0; i < 300; i++) round();
const res: number[] = [];
for (let r = 0; r < 9; r++) {
  const t0 = process.cpuUsage();
  for (let i = 0; i < 250; i++) round();
  const d = process.cpuUsage(t0);
  res.push(((d.user + d.system) * 1000) / (250 * recs));
}
res.sort((a, b) => a - b);
console.log(
  `ns CPU per event, median of 9 rounds of ${250 * recs}: ${res[4].toFixed(1)} (min ${res[0].toFixed(1)}, max ${res[8].toFixed(1)})`,
);
c.close();
