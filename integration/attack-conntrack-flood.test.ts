// Conntrack exhaustion with real packets (root): with the wave-1 table size (--ct-max 65536), pod A
// opens 70,000 new UDP flows as fast as it can, more than the whole table. B's established TCP
// connection to D keeps flowing throughout, B still opens new connections, A's new flows fail closed
// once it owns its share (a quarter of the table), and the fill level shows in the metrics.
import t from 'tap';
import { castOf, reasonName } from './lib/attack-pods.ts';
import { killAll, startEchoServer, startFlow, tcpRequest } from './lib/tcp.ts';
import { probe } from './lib/probe.ts';
import { metricsText } from './lib/metrics.ts';
import { pollUntil } from '../shared/test/lib/poll.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const CT_MAX = 65536;
const cast = castOf(['a', 'b', 'd'], { extraArgs: ['--ct-max', String(CT_MAX)] });

async function metric(name: string, labels: string): Promise<number | undefined> {
  const text = await metricsText(cast.agent.client);
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? undefined : Number(line.split(' ').pop());
}

t.test("70,000 new flows from one pod break no other pod's established flow", async (t) => {
  const { a, b, d } = cast.pods;
  const servers = [await startEchoServer(d.ns, 7000, '0.0.0.0'), await startEchoServer(d.ns, 7001, '0.0.0.0')];
  const flow = startFlow(b.ns, d.ip4, 7000);
  t.teardown(() => {
    flow.stop();
    killAll(servers);
  });
  await pollUntil(() => flow.echoed() > 0 || flow.failed() !== null, 30_000, 100);
  t.ok(flow.echoed() > 0, "B's connection to D runs");
  const insertFailed = reasonName(155);
  const before = (await cast.drops())[insertFailed] ?? 0;

  // The flood: 70,000 datagrams, each a new flow (two source ports x 35,000 destination ports).
  const flood = a.ns.exec(
    'python3',
    [
      '-c',
      `import socket,sys
n=0
for sp in (20001,20002):
  s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(("0.0.0.0",sp))
  for dp in range(10000,45000):
    try: s.sendto(b"f",(sys.argv[1],dp)); n+=1
    except OSError: pass
print(n)`,
      d.ip4,
    ],
    { timeoutMs: 120_000 },
  );
  // Watch B's connection while A floods: it must never stall for a second.
  let last = flow.echoed(),
    lastMove = Date.now(),
    worst = 0,
    done = false;
  const sent = flood.then((out) => {
    done = true;
    return Number(out.trim());
  });
  while (!done) {
    await new Promise((r) => setTimeout(r, 50));
    if (flow.echoed() !== last) {
      last = flow.echoed();
      worst = Math.max(worst, Date.now() - lastMove);
      lastMove = Date.now();
    }
  }
  worst = Math.max(worst, Date.now() - lastMove);
  const n = await sent;
  t.ok(n >= 70_000, `A sent ${n} datagrams, each a new flow`);
  t.ok(worst < 1000, `B's connection never stalled for a second (longest gap ${worst} ms)`);
  t.equal(flow.failed(), null, "B's connection is intact");
  const afterFlood = last;
  await pollUntil(() => flow.echoed() > afterFlood || flow.failed() !== null, 20_000, 100);
  t.ok(flow.echoed() > afterFlood, 'and still flowing after the flood');

  const least = n - CT_MAX / 4;
  const refused = ((await cast.dropsReaching({ [insertFailed]: before }, { [insertFailed]: least }))[insertFailed] ?? 0) - before;
  t.ok(refused >= least, `A's flows beyond its share (${CT_MAX / 4}) were refused: ${refused} ${insertFailed}`);
  t.equal(await tcpRequest(b.ns, d.ip4, 7001), 'ping', 'B opens a new connection');
  t.equal(await probe(a.ns, d.ip4, 7001, 1500), 'timeout', "A's own new connections fail closed while it holds its share");
  // The fill level, in the metrics (sampled, so give it a moment).
  let entries = 0;
  for (let i = 0; i < 60 && entries < CT_MAX / 4; i++) {
    entries = (await metric('membrane_bpf_map_entries', 'map="conntrack"')) ?? 0;
    if (entries < CT_MAX / 4) await new Promise((r) => setTimeout(r, 250));
  }
  t.ok(entries >= CT_MAX / 4 && entries < CT_MAX, `membrane_bpf_map_entries{map="conntrack"} = ${entries} (of ${CT_MAX})`);
  t.equal(await metric('membrane_bpf_map_capacity', 'map="conntrack"'), CT_MAX, 'membrane_bpf_map_capacity{map="conntrack"}');
});
