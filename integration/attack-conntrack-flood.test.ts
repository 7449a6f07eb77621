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
/** How often the watch below looks, and how late it can see the control move (its reports come
 *  every 100 ms): a stall of B counts from then, so the threshold is lowered by as much. */
const POLL_MS = 50;
const CONTROL_LAG_MS = 100 + POLL_MS;
const cast = castOf(['a', 'b', 'd'], { extraArgs: ['--ct-max', String(CT_MAX)] });

async function metric(name: string, labels: string): Promise<number | undefined> {
  const text = await metricsText(cast.agent.client);
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? undefined : Number(line.split(' ').pop());
}

t.test("70,000 new flows from one pod break no other pod's established flow", async (t) => {
  const { a, b, d } = cast.pods;
  const servers = [
    await startEchoServer(d.ns, 7000, '0.0.0.0'),
    await startEchoServer(d.ns, 7001, '0.0.0.0'),
    await startEchoServer(b.ns, 7002, '127.0.0.1'),
  ];
  const flow = startFlow(b.ns, d.ip4, 7000);
  // The same kind of flow over B's own loopback, which no program of ours sees: what the machine's
  // load alone does to a flow's progress, measured alongside.
  const control = startFlow(b.ns, '127.0.0.1', 7002);
  t.teardown(() => {
    flow.stop();
    control.stop();
    killAll(servers);
  });
  await pollUntil(
    () => (flow.echoed() > 0 || flow.failed() !== null) && (control.echoed() > 0 || control.failed() !== null),
    30_000,
    100,
  );
  t.ok(flow.echoed() > 0, `B's connection to D runs (${flow.failed() ?? 'no error'})`);
  t.ok(control.echoed() > 0, `and the loopback control flow (${control.failed() ?? 'no error'})`);
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
  // Watch B's connection while A floods: it must never stall for a second while the loopback flow
  // moves. A gap in both is the machine (a loaded 2-vCPU runner leaves every process unscheduled
  // now and then; the flood itself is a busy process), a gap in B's alone is the datapath.
  let last = flow.echoed(),
    lastMove = Date.now(),
    lastControl = control.echoed(),
    stalledSince: number | undefined, // the control's first move since B's last one
    worst = 0, // B's longest time without progress while the control moved
    worstGap = 0, // B's longest gap, whatever its cause (reported)
    done = false;
  const sent = flood.then((out) => {
    done = true;
    return Number(out.trim());
  });
  while (!done) {
    await new Promise((r) => setTimeout(r, POLL_MS));
    const now = Date.now();
    if (flow.echoed() !== last) {
      last = flow.echoed();
      worstGap = Math.max(worstGap, now - lastMove);
      lastMove = now;
      stalledSince = undefined;
    } else if (control.echoed() !== lastControl) {
      stalledSince ??= now;
      worst = Math.max(worst, now - stalledSince);
    }
    lastControl = control.echoed();
  }
  worstGap = Math.max(worstGap, Date.now() - lastMove);
  const n = await sent;
  t.ok(n >= 70_000, `A sent ${n} datagrams, each a new flow`);
  t.ok(
    worst < 1000 - CONTROL_LAG_MS,
    `B's connection never stalled for a second while the loopback control flowed (longest ${worst} ms, counted from the control's first move: up to ${CONTROL_LAG_MS} ms late; longest gap at all ${worstGap} ms)`,
  );
  t.equal(flow.failed(), null, "B's connection is intact");
  const afterFlood = last;
  await pollUntil(() => flow.echoed() > afterFlood || flow.failed() !== null, 20_000, 100);
  t.ok(flow.echoed() > afterFlood, 'and still flowing after the flood');

  const least = n - CT_MAX / 4;
  const refused = ((await cast.dropsReaching({ [insertFailed]: before }, { [insertFailed]: least }))[insertFailed] ?? 0) - before;
  t.ok(refused >= least, `A's flows beyond its share (${CT_MAX / 4}) were refused: ${refused} ${insertFailed}`);
  t.equal(await tcpRequest(b.ns, d.ip4, 7001), 'ping', 'B opens a new connection');
  // A timeout alone could be a slow answer on a loaded machine: the datapath's count says it refused it.
  const beforeProbe = (await cast.drops())[insertFailed] ?? 0;
  const own = await probe(a.ns, d.ip4, 7001, 1500);
  const afterProbe = (await cast.drops())[insertFailed] ?? 0;
  t.equal(own, 'timeout', "A's own new connections fail closed while it holds its share");
  t.ok(afterProbe > beforeProbe, `refused by the datapath: ${insertFailed} ${beforeProbe} -> ${afterProbe}`);
  // The fill level, in the metrics (sampled, so give it a moment).
  let entries = 0;
  await pollUntil(
    async () => (entries = (await metric('membrane_bpf_map_entries', 'map="conntrack"')) ?? 0) >= CT_MAX / 4,
    30_000,
    250,
  );
  t.ok(entries >= CT_MAX / 4 && entries < CT_MAX, `membrane_bpf_map_entries{map="conntrack"} = ${entries} (of ${CT_MAX})`);
  t.equal(await metric('membrane_bpf_map_capacity', 'map="conntrack"'), CT_MAX, 'membrane_bpf_map_capacity{map="conntrack"}');
});
