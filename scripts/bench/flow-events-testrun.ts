// node --import tsx scripts/bench/flow-events-testrun.ts [OBJ...] — not a test. What a local (pod-to-pod,
// redirect_peer) TCP connection's flow events cost the datapath, timed by the kernel per program run
// (BPF_PROG_TEST_RUN's duration, no scheduler or other load in it beyond the CPU's own): the SYN that
// makes the flow (FLOW_NEW at both ends) and the FIN that ends it (FLOW_END at both ends), each with
// events on and off, for each datapath object given (default dist/bpf/endpoint.o), objects and modes
// interleaved per round. Reported: median ns per connection (SYN + FIN) per object and mode.
// DST=world: the SYN and FIN go to a world address (198.18.0.0/15) instead: one FLOW_NEW / FLOW_END each
// (emit_event, the egress path a native cross-node connection's sender takes). DRAIN_EACH=1: the ring
// is read after every connection, so each connection's first record finds it empty and its commit
// queues the ring's wake-up irq_work (as when the agent's reader keeps up), instead of every 256.
// Run as root, under the bench lock: flock /work/wt/.bench.lock node --import tsx scripts/bench/flow-events-testrun.ts A.o B.o
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadDatapath, removePins, type Datapath } from '../../shared/src/bpf/datapath.ts';
import { objGet, progTestRun } from '../../shared/src/bpf/libbpf.ts';
import { RingBufferReader } from '../../shared/src/flows/ringbuf.ts';
import { datapathOps } from '../../shared/src/policy/datapath-ops.ts';
import { PolicyEngine } from '../../shared/src/policy/engine.ts';
import { MemoryStore } from '../../shared/src/store/index.ts';
import { ACK, DST, endpoint, FIN, ipv4, SRC, SYN, tcp } from '../../shared/test/lib/policy-bpf-packets.ts';
import { median } from './lib.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const objects = process.argv.slice(2).length ? process.argv.slice(2) : [path.join(root, 'dist/bpf/endpoint.o')];
const ROUNDS = Number(process.env.ROUNDS ?? 9);
const CONNS = Number(process.env.CONNS ?? 2000);
const DST_IP = process.env.DST === 'world' ? '198.18.14.14' : DST.ip;
const DRAIN_EVERY = process.env.DRAIN_EACH === '1' ? 1 : 256;

interface Side {
  obj: string;
  pinDir: string;
  dp: Datapath;
  engine: PolicyEngine;
  from: number;
  ring: RingBufferReader;
}

async function open(obj: string): Promise<Side> {
  const pinDir = `/sys/fs/bpf/mbt-${randomBytes(4).toString('hex')}`;
  const dp = loadDatapath({ objectPath: obj, pinDir });
  const engine = await PolicyEngine.open({
    store: new MemoryStore(),
    ops: datapathOps(dp),
    hostAddresses: () => ['10.252.0.254'],
  });
  await engine.start();
  for (const e of [SRC, DST]) {
    const id = await engine.identityFor(e.labels);
    const ep = endpoint(e, id);
    dp.upsertEndpoint({
      hostIfindex: e.ifindex,
      endpointId: e.id,
      identity: id,
      flags: 0,
      hostMac: ep.hostMac,
      containerMac: ep.mac,
      ips: [e.ip, e.ip6],
    });
    await engine.endpointAttached(ep);
  }
  return {
    obj,
    pinDir,
    dp,
    engine,
    from: objGet(path.join(pinDir, 'prog_from_container')),
    ring: RingBufferReader.open(path.join(pinDir, 'events')),
  };
}

let port = 10000;
/** ns per connection (the SYN's run plus the FIN's), median over CONNS connections, and the ring
 *  records read per connection (each a check that the events were made). */
function connections(s: Side, events: boolean): { ns: number; records: number } {
  // A rate limit no run reaches: the token bucket's code runs, as with the agent's default.
  s.dp.setGlobalConfig({ events, audit: false, eventsPerSecond: 100_000_000 });
  const ns: number[] = [];
  let records = 0;
  for (let i = 0; i < CONNS; i++) {
    const sp = (port = port >= 60000 ? 10000 : port + 1);
    const syn = progTestRun(s.from, ipv4(SRC.ip, DST_IP, 6, tcp(sp, 80, SYN, 111)));
    const fin = progTestRun(s.from, ipv4(SRC.ip, DST_IP, 6, tcp(sp, 80, ACK | FIN)));
    ns.push(syn.durationNs + fin.durationNs);
    if (i % DRAIN_EVERY === DRAIN_EVERY - 1) records += s.ring.drain(1e6, () => undefined); // the ring never fills
  }
  records += s.ring.drain(1e6, () => undefined);
  return { ns: median(ns), records: records / CONNS };
}

const sides: Side[] = [];
try {
  for (const obj of objects) sides.push(await open(obj));
  const got = new Map<string, number[]>();
  const records = new Map<string, number>();
  for (let r = 0; r < ROUNDS; r++) {
    for (const s of r % 2 ? [...sides].reverse() : sides) {
      for (const events of r % 2 ? [false, true] : [true, false]) {
        const k = `${s.obj} events ${events ? 'on' : 'off'}`;
        const c = connections(s, events);
        got.set(k, [...(got.get(k) ?? []), c.ns]);
        records.set(k, c.records);
      }
    }
  }
  for (const [k, v] of got)
    console.log(
      `${k}: ${median(v).toFixed(0)} ns per connection, ${records.get(k)} ring records per connection (rounds ${v.map((x) => x.toFixed(0)).join(', ')})`,
    );
} finally {
  for (const s of sides) {
    s.ring.close();
    fs.closeSync(s.from);
    await s.engine.close();
    s.dp.close();
    removePins(s.pinDir);
  }
}
