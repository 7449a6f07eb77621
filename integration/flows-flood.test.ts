// The lost-event counter is honest under a flood: a UDP flood from one pod to a port another pod's
// policy denies makes every packet a policy drop. The datapath counts each drop (drop_counters) and
// emits one DROP event for it, unless its rate limit or a full ring buffer stops it, which
// events_lost counts. So after the flood: drops = DROP flows the agent saw + events lost (give or
// take the flood's own FLOW_NEW at the sender's egress, which shares the rate limit). The agent keeps
// answering meanwhile. Every wait is on a count (floods run until the counters show what they are for),
// none on a duration. Traffic stays between our netns; everything is removed.
import t from 'tap';
import os from 'node:os';
import { randomId, startAgent, type TestAgent } from './lib/agent.ts';
import { createNetns, type TestNetns } from './lib/netns.ts';
import { ObserverClient } from '../shared/src/flows/client.ts';
import { sampleValue } from '../shared/src/metrics/parse.ts';
import { scrapeMetrics } from './lib/metrics.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import type { Endpoint } from '../shared/src/types.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

// A low per-CPU event budget so a flood from a test netns overruns it for sure.
const EVENTS_PER_SECOND = 2000;
const PORT = 9400 + Math.floor(Math.random() * 500);
const run = randomId(3);
/** Only a safety net: a failing test must end. Nothing here waits for a time to pass. */
const DEADLINE_MS = 120_000;

// Sends datagrams from one socket (one 5-tuple) as fast as the kernel takes them until SIGTERM, then
// prints how many it sent. Floods stop on what the counters show, never after a fixed time: a loaded
// machine floods slower, for longer.
const FLOODER = `
const s = require('dgram').createSocket('udp4');
const [ip, port] = [process.argv[1], Number(process.argv[2])];
const payload = Buffer.alloc(32);
const cap = setTimeout(() => { stop = true; }, ${DEADLINE_MS}); // an orphaned flooder ends on its own
let sent = 0, inflight = 0, stop = false;
process.on('SIGTERM', () => { stop = true; });
function pump() {
  while (inflight < 256 && !stop) {
    inflight++;
    s.send(payload, port, ip, () => { inflight--; sent++; });
  }
  if (!stop) setImmediate(pump);
  else { clearTimeout(cap); const wait = () => (inflight ? setImmediate(wait) : (process.stdout.write(String(sent)), s.close())); wait(); }
}
s.bind(0, pump);
`;

/** Polls until cond() holds; fails (throws) only at the safety deadline. */
async function until<T>(what: string, get: () => Promise<T>, cond: (v: T) => boolean): Promise<T> {
  const end = Date.now() + DEADLINE_MS;
  for (;;) {
    const v = await get();
    if (cond(v)) return v;
    if (Date.now() > end) throw new Error(`never happened: ${what} (last: ${JSON.stringify(v)})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface Flood {
  stop(): Promise<number>;
  running(): boolean;
}
function startFlood(ns: TestNetns, ip: string): Flood {
  const child = ns.spawn(process.execPath, ['-e', FLOODER, ip, String(PORT)]);
  let out = '';
  child.stdout!.on('data', (d) => {
    out += d;
  });
  let exited = false;
  const done = new Promise<void>((r) =>
    child.once('exit', () => {
      exited = true;
      r();
    }),
  );
  return {
    running: () => !exited,
    stop: async () => {
      if (!exited) child.kill('SIGTERM');
      await done;
      return Number(out);
    },
  };
}

let agent: TestAgent;
let observer: ObserverClient;
const nss: TestNetns[] = [];

t.teardown(async () => {
  observer?.close();
  await agent?.cleanup();
  for (const n of nss) n.remove();
});

t.test('a drop flood: every dropped packet is either a flow or a counted loss', async (t) => {
  agent = await startAgent({ env: { MEMBRANE_EVENTS_PER_SECOND: String(EVENTS_PER_SECOND) } });
  observer = new ObserverClient(agent.observerSocket);
  const eps: Endpoint[] = [];
  for (const name of ['src', 'dst']) {
    const n = createNetns('mbf');
    nss.push(n);
    eps.push(
      await agent.client.createEndpoint({
        containerId: `flood-${name}-${run}`,
        netns: n.path,
        ifName: 'eth0',
        labels: { app: `flood-${name}`, run },
      }),
    );
  }
  const dstIp = eps[1].ips[0].address.split('/')[0];
  await new PolicyClient(agent.client).import(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: flood-dst-${run}}
spec:
  endpointSelector: {matchLabels: {app: flood-dst, run: "${run}"}}
  ingress:
  - toPorts: [{ports: [{port: "1", protocol: TCP}]}]
`);
  const before = await scrapeMetrics(agent.client);
  const v = (page: typeof before, name: string, labels: Record<string, string>) => sampleValue(page, name, labels) ?? 0;

  // Flood until the rate limit has visibly cut events; meanwhile the agent keeps serving.
  const st0 = await observer.status();
  const lost0 = st0.membrane?.lostEventsDatapath ?? 0;
  const t0 = performance.now();
  const flood = startFlood(nss[0], dstIp);
  const during = await until(
    'drop flows and lost events while flooding',
    () => observer.status(),
    (st) => st.seenFlows > st0.seenFlows && (st.membrane?.lostEventsDatapath ?? 0) > lost0,
  );
  const stillFlooding = flood.running();
  const later = await observer.status();
  t.ok(stillFlooding && flood.running(), 'the flood was still running');
  t.ok(
    later.seenFlows >= during.seenFlows && during.seenFlows > st0.seenFlows,
    'the observer answers during the flood, and drop flows arrive',
  );
  const sent = await flood.stop();
  const floodSeconds = (performance.now() - t0) / 1000; // an upper bound of how long packets were sent
  t.ok(sent > 0, `flood sent ${sent} datagrams in at most ${floodSeconds.toFixed(1)} s`);

  // The reader has caught up once every counted drop is a flow or a loss; then read it all in one scrape.
  const sum = (page: typeof before) => ({
    drops:
      v(page, 'membrane_drop_count_total', { reason: 'POLICY_DENIED' }) -
      v(before, 'membrane_drop_count_total', { reason: 'POLICY_DENIED' }),
    seen:
      v(page, 'membrane_flows_processed_total', { verdict: 'DROPPED', type: 'DROP' }) -
      v(before, 'membrane_flows_processed_total', { verdict: 'DROPPED', type: 'DROP' }),
    lost:
      v(page, 'membrane_flow_events_lost_total', { source: 'datapath' }) -
      v(before, 'membrane_flow_events_lost_total', { source: 'datapath' }),
  });
  const after = await until(
    'every drop is a flow or a counted loss',
    () => scrapeMetrics(agent.client),
    (page) => {
      const c = sum(page);
      return c.drops > 0 && c.seen + c.lost >= c.drops;
    },
  );
  const { drops, seen, lost } = sum(after);
  t.comment(`sent ${sent}, dropped ${drops}, DROP flows ${seen}, lost ${lost}`);
  t.ok(drops > 0 && drops <= sent, 'the datapath dropped the flood');
  t.ok(lost > 0, 'the rate limit cut events: the loss is visible');
  t.ok(seen <= drops, 'never more drop flows than drops');
  t.ok(
    seen + lost >= drops && seen + lost <= drops + 2,
    `drops (${drops}) = seen (${seen}) + lost (${lost}), within the flood's own FLOW_NEW`,
  );
  // At most EVENTS_PER_SECOND per CPU (plus each CPU's initial burst) got through: the limit decided.
  const cpus = os.cpus().length;
  t.ok(seen <= cpus * EVENTS_PER_SECOND * (floodSeconds + 2), `seen ${seen} within the rate limit`);
  const st = await observer.status();
  t.equal(
    st.membrane?.lostEventsDatapath,
    v(after, 'membrane_flow_events_lost_total', { source: 'datapath' }),
    'ServerStatus and metrics agree on lost events',
  );
  t.equal(st.membrane?.lostEventsAgent, 0, 'the agent itself lost nothing');
  // The loss shows up in a follow stream too. The follower asks for flows that never happen, so its
  // queue stays empty whatever the client's pace: every loss report must reach it.
  const stream = observer.flows({ follow: true, whitelist: [{ destinationPort: [String(PORT + 1)] }] });
  t.teardown(() => stream.cancel());
  const it = stream.responses[Symbol.asyncIterator]();
  await until(
    'the follower is subscribed',
    () => scrapeMetrics(agent.client),
    (page) => (sampleValue(page, 'membrane_observer_followers') ?? 0) >= 1,
  );
  const lostBefore = (await observer.status()).membrane?.lostEventsDatapath ?? 0;
  const again = startFlood(nss[0], dstIp);
  await until(
    'the second flood loses events',
    () => observer.status(),
    (s) => (s.membrane?.lostEventsDatapath ?? 0) > lostBefore,
  );
  await again.stop();
  const lostAfter = await observer.status();
  const owed = (lostAfter.membrane?.lostEventsDatapath ?? 0) - lostBefore;
  // Every loss counted after the follower subscribed reaches it, in one or more LostEvents.
  let told = 0;
  const others: string[] = [];
  const deadline = new Promise<null>((res) => {
    const tm = setTimeout(() => res(null), DEADLINE_MS);
    tm.unref();
  });
  while (told < owed) {
    const r = await Promise.race([it.next(), deadline]);
    if (!r || r.done) break;
    if (r.value.lostEvents?.source === 'PERF_EVENT_RING_BUFFER') told += r.value.lostEvents.numEventsLost;
    else others.push(JSON.stringify(r.value).slice(0, 200));
  }
  stream.cancel();
  t.ok(owed > 0, `the second flood lost ${owed} events`);
  t.ok(told >= owed, `followers get a LostEvent: told of ${told} lost events, ${owed} counted since they subscribed`);
  t.same(others, [], 'and nothing else (no flow matches their filter)');
});
