// The lost-event counter is honest under a flood: a UDP flood from one pod to a port another pod's
// policy denies makes every packet a policy drop. The datapath counts each drop (drop_counters) and
// emits one DROP event for it, unless its rate limit or a full ring buffer stops it, which
// events_lost counts. So after the flood: drops = DROP flows the agent saw + events lost (give or
// take the flood's own FLOW_NEW at the sender's egress, which shares the rate limit). The agent keeps
// answering meanwhile. Traffic stays between our netns; everything is removed.
import t from 'tap';
import http from 'node:http';
import os from 'node:os';
import { randomId, startAgent, type TestAgent } from './lib/agent.ts';
import { createNetns, type TestNetns } from './lib/netns.ts';
import { ObserverClient } from '../shared/src/flows/client.ts';
import { parsePrometheusText, sampleValue } from '../shared/src/metrics/parse.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import type { Endpoint } from '../shared/src/types.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

// A low per-CPU event budget so a flood from a test netns overruns it for sure.
const EVENTS_PER_SECOND = 2000;
const FLOOD_SECONDS = 3;
const PORT = 9400 + Math.floor(Math.random() * 500);
const run = randomId(3);

// Sends datagrams from one socket (one 5-tuple) as fast as the kernel takes them, for N seconds.
const FLOODER = `
const s = require('dgram').createSocket('udp4');
const [ip, port, seconds] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const payload = Buffer.alloc(32);
const end = Date.now() + seconds * 1000;
let sent = 0, inflight = 0;
function pump() {
  while (inflight < 256 && Date.now() < end) {
    inflight++;
    s.send(payload, port, ip, () => { inflight--; sent++; });
  }
  if (Date.now() < end) setImmediate(pump);
  else { const wait = () => (inflight ? setImmediate(wait) : (process.stdout.write(String(sent)), s.close())); wait(); }
}
s.bind(0, pump);
`;

let agent: TestAgent;
let observer: ObserverClient;
const nss: TestNetns[] = [];

t.teardown(async () => {
  observer?.close();
  await agent?.cleanup();
  for (const n of nss) n.remove();
});

async function metrics(address: string): Promise<Map<string, ReturnType<typeof parsePrometheusText> extends Map<string, infer F> ? F : never>> {
  const text = await new Promise<string>((resolve, reject) => {
    http.get(`http://${address}/metrics`, (res) => {
      let b = '';
      res.on('data', (d) => { b += d; });
      res.on('end', () => resolve(b));
    }).on('error', reject);
  });
  return parsePrometheusText(text);
}

t.test('a drop flood: every dropped packet is either a flow or a counted loss', async (t) => {
  agent = await startAgent({ env: { MEMBRANE_EVENTS_PER_SECOND: String(EVENTS_PER_SECOND) } });
  observer = new ObserverClient(agent.observerSocket);
  const eps: Endpoint[] = [];
  for (const name of ['src', 'dst']) {
    const n = createNetns('mbf');
    nss.push(n);
    eps.push(await agent.client.createEndpoint({ containerId: `flood-${name}-${run}`, netns: n.path, ifName: 'eth0', labels: { app: `flood-${name}`, run } }));
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
  const address = ((await agent.client.status()) as unknown as { metrics: { address: string } }).metrics.address;
  const before = await metrics(address);
  const v = (page: typeof before, name: string, labels: Record<string, string>) => sampleValue(page, name, labels) ?? 0;

  const flood = nss[0].spawn(process.execPath, ['-e', FLOODER, dstIp, String(PORT), String(FLOOD_SECONDS)]);
  let sentText = '';
  flood.stdout!.on('data', (d) => { sentText += d; });
  const floodDone = new Promise<void>((r) => flood.once('exit', () => r()));
  let floodRunning = true;
  void floodDone.then(() => { floodRunning = false; });
  // The agent keeps serving during the flood (the flooder takes a moment to start on a busy machine).
  const seen0 = (await observer.status()).seenFlows;
  let during = await observer.status();
  while (floodRunning && during.seenFlows === seen0) {
    await new Promise((r) => setTimeout(r, 100));
    during = await observer.status();
  }
  if (floodRunning) {
    const t0 = performance.now();
    await observer.status(5000);
    t.ok(performance.now() - t0 < 2000, `observer answers during the flood (${(performance.now() - t0).toFixed(0)} ms)`);
  }
  t.ok(during.seenFlows > seen0, 'drop flows arrive while flooding');
  await floodDone;
  const sent = Number(sentText);
  t.ok(sent > EVENTS_PER_SECOND * FLOOD_SECONDS * 2, `flood sent ${sent} datagrams`);

  // Settle: the reader drains what is left (10 ms period), then read every counter in one scrape.
  let after = await metrics(address);
  for (let i = 0; i < 20; i++) {
    await new Promise((r) => setTimeout(r, 200));
    const next = await metrics(address);
    const same = ['membrane_flows_processed_total', 'membrane_flow_events_lost_total', 'membrane_drop_count_total']
      .every((n) => JSON.stringify(next.get(n)?.samples) === JSON.stringify(after.get(n)?.samples));
    after = next;
    if (same) break;
  }
  const delta = (name: string, labels: Record<string, string>) => v(after, name, labels) - v(before, name, labels);
  const drops = delta('membrane_drop_count_total', { reason: 'POLICY_DENIED' });
  const seen = delta('membrane_flows_processed_total', { verdict: 'DROPPED', type: 'DROP' });
  const lost = delta('membrane_flow_events_lost_total', { source: 'datapath' });
  t.comment(`sent ${sent}, dropped ${drops}, DROP flows ${seen}, lost ${lost}`);
  t.ok(drops > 0 && drops <= sent, 'the datapath dropped the flood');
  t.ok(lost > 0, 'the rate limit cut events: the loss is visible');
  t.ok(seen <= drops, 'never more drop flows than drops');
  t.ok(seen + lost >= drops && seen + lost <= drops + 2, `drops (${drops}) = seen (${seen}) + lost (${lost}), within the flood's own FLOW_NEW`);
  // At most EVENTS_PER_SECOND per CPU (plus each CPU's initial burst) got through: the limit decided.
  const cpus = os.cpus().length;
  t.ok(seen <= cpus * EVENTS_PER_SECOND * (FLOOD_SECONDS + 2 + 1), `seen ${seen} within the rate limit`);
  const st = await observer.status();
  t.equal(st.membrane?.lostEventsDatapath, v(after, 'membrane_flow_events_lost_total', { source: 'datapath' }), 'ServerStatus and metrics agree on lost events');
  t.equal(st.membrane?.lostEventsAgent, 0, 'the agent itself lost nothing');
  // The loss shows up in a follow stream too.
  const stream = observer.flows({ follow: true });
  const it = stream.responses[Symbol.asyncIterator]();
  const again = nss[0].spawn(process.execPath, ['-e', FLOODER, dstIp, String(PORT), '2']);
  let sawLost = false;
  const end = Date.now() + 8000;
  while (!sawLost && Date.now() < end) {
    const r = await Promise.race([it.next(), new Promise<null>((res) => setTimeout(() => res(null), 8000))]);
    if (!r || r.done) break;
    if (r.value.lostEvents?.source === 'PERF_EVENT_RING_BUFFER' && r.value.lostEvents.numEventsLost > 0) sawLost = true;
  }
  stream.cancel();
  again.kill('SIGKILL');
  t.ok(sawLost, 'followers get a LostEvent');
});
