// The flow relay on the 3-node harness (lib/relay-cluster.ts), following: flows of every node as they
// happen; a node that dies is reported (NODE_UNAVAILABLE, then NODE_CONNECTED when it is back), never
// fatal; a node removed from the cluster is reported (NODE_GONE) and no longer asked.
import t from 'tap';
import { eventually, type TestPod } from './lib/cluster.ts';
import { startEchoServer } from './lib/tcp.ts';
import { probe } from './lib/probe.ts';
import { cli, relayClusterForFile } from './lib/relay-cluster.ts';
import type { GetFlowsResponse } from '../shared/src/flows/types.ts';
import { timeNs } from '../shared/src/relay/merge.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const { c, relaySocket, servers, known, relayClient } = relayClusterForFile(t);

t.test(
  'follow through the relay: flows of every node as they happen; a node that dies is reported, the others go on',
  async (t) => {
    const [n1, n2, n3] = c.nodes;
    const a = await n3.pod({ app: 'a' });
    const b = await n1.pod({ app: 'b' });
    const d = await n2.pod({ app: 'd' });
    servers.push(await startEchoServer(b.ns, 8081, '::'));
    await eventually('pods known', () => known(a) && known(b) && known(d), 20_000);
    const r = relayClient();
    const seen: GetFlowsResponse[] = [];
    const stream = r.flows({ follow: true });
    const reading = (async () => {
      try {
        for await (const x of stream.responses) seen.push(x);
      } catch {
        /* cancelled */
      }
    })();
    try {
      const fromTo = (src: TestPod, node: string) => (x: GetFlowsResponse) =>
        x.flow?.IP?.source === src.ip4 && x.flow.nodeName === node && x.flow.l4?.TCP?.destinationPort === 8081;
      t.equal(await probe(a.ns, b.ip4, 8081, 5000), 'ok', 'a (n3) -> b (n1)');
      await eventually('n3 and n1 flows followed', () => seen.some(fromTo(a, 'n3')) && seen.some(fromTo(a, 'n1')), 15_000, 100);
      t.ok(
        seen.some(fromTo(a, 'n3')) && seen.some(fromTo(a, 'n1')),
        'the follow shows n3 (over its unix socket) and n1 (over TLS)',
      );

      await n3.agent.kill9();
      const status = (state: string) => () =>
        seen.some((x) => x.nodeStatus?.stateChange === state && x.nodeStatus.nodeNames?.includes('n3'));
      await eventually('NODE_UNAVAILABLE for n3', status('NODE_UNAVAILABLE'), 20_000, 100).catch(() => undefined);
      t.ok(status('NODE_UNAVAILABLE')(), "n3's agent died: the follow says NODE_UNAVAILABLE n3");
      t.equal(await probe(d.ns, b.ip4, 8081, 5000), 'ok', 'd (n2) -> b (n1) meanwhile');
      await eventually('n2 flows still followed', () => seen.some(fromTo(d, 'n2')) && seen.some(fromTo(d, 'n1')), 15_000, 100);
      t.ok(seen.some(fromTo(d, 'n2')), "and the same stream goes on with the other nodes' flows");
      const once = relayClient();
      try {
        const res = await once.collect({ number: 5 });
        t.match(
          res[0]?.nodeStatus,
          { stateChange: 'NODE_UNAVAILABLE', nodeNames: ['n3'] },
          'a new request starts by naming the unavailable node',
        );
        t.ok(
          res.slice(1).every((x) => x.flow && x.flow.nodeName !== 'n3'),
          'then flows of the others',
        );
      } finally {
        once.close();
      }
      const out = cli('observe', '--server', relaySocket, '--last', '5', '--print-node-name');
      t.match(
        out.split('\n')[0],
        /NODE_UNAVAILABLE n3$/,
        `membrane observe --server starts by naming the unavailable node:\n${out}`,
      );

      await n3.agent.start();
      await eventually('NODE_CONNECTED for n3', status('NODE_CONNECTED'), 30_000, 200).catch(() => undefined);
      t.ok(status('NODE_CONNECTED')(), 'n3 is back: NODE_CONNECTED n3');
      const before = seen.length;
      t.equal(await probe(a.ns, b.ip4, 8081, 5000), 'ok', 'a (n3) -> b (n1) again');
      await eventually('n3 flows again', () => seen.slice(before).some(fromTo(a, 'n3')), 15_000, 100);
      t.ok(seen.slice(before).some(fromTo(a, 'n3')), 'and its flows come through the same follow again');
      const followed = seen.filter((x) => x.flow);
      const followTimes = followed.map((x) => timeNs(x.time));
      const outOfOrder = followTimes.flatMap((v, i) => (i > 0 && v < followTimes[i - 1] ? [i] : []));
      // Each pair says which node's flow came late and by how much: a node slower than the relay's
      // sort window, or flows a reconnected node replayed.
      const show = (i: number) =>
        `#${i} ${followed[i].flow!.nodeName} ${followed[i].flow!.IP?.source}->${followed[i].flow!.IP?.destination} at ${followTimes[i]}`;
      const pairs = outOfOrder.map(
        (i) => `${show(i - 1)} then ${show(i)} (${(followTimes[i - 1] - followTimes[i]) / 1_000_000n} ms older)`,
      );
      t.equal(
        outOfOrder.length,
        0,
        `${followTimes.length} followed flows, in time order${pairs.length ? `: ${pairs.join('; ')}` : ''}`,
      );
    } finally {
      stream.cancel();
      await reading;
      r.close();
    }
  },
);

t.test('a node removed from the cluster: the relay says NODE_GONE, stops asking it and serves the others', async (t) => {
  const [n1, n2, n3] = c.nodes;
  const b = await n1.pod({ app: 'b-gone' });
  const d = await n2.pod({ app: 'd-gone' });
  servers.push(await startEchoServer(b.ns, 8082, '::'));
  await eventually('pods known', () => known(b) && known(d), 20_000);
  const r = relayClient();
  const seen: GetFlowsResponse[] = [];
  const stream = r.flows({ follow: true });
  const reading = (async () => {
    try {
      for await (const x of stream.responses) seen.push(x);
    } catch {
      /* cancelled */
    }
  })();
  const gone = () => seen.filter((x) => x.nodeStatus?.stateChange === 'NODE_GONE' && x.nodeStatus.nodeNames?.includes('n3'));
  try {
    // The agent stops and its node leaves etcd when its lease lapses (20 s here).
    await c.removeNode(n3);
    await eventually('NODE_GONE for n3', () => gone().length > 0, 60_000, 200).catch(() => undefined);
    t.ok(gone().length > 0, 'the follow says NODE_GONE n3 once its node record is gone');
    const after = seen.length;
    t.equal(await probe(d.ns, b.ip4, 8082, 5000), 'ok', 'd (n2) -> b (n1)');
    const fromD = (node: string) =>
      seen
        .slice(after)
        .some((x) => x.flow?.IP?.source === d.ip4 && x.flow.nodeName === node && x.flow.l4?.TCP?.destinationPort === 8082);
    await eventually('n1 and n2 flows followed', () => fromD('n1') && fromD('n2'), 15_000, 100).catch(() => undefined);
    t.ok(fromD('n1') && fromD('n2'), "and the same follow goes on with n1's and n2's flows");
  } finally {
    stream.cancel();
    await reading;
    r.close();
  }
  const q = relayClient();
  try {
    t.same(
      (await q.nodes()).map((n) => [n.name, n.state]),
      [
        ['n1', 'NODE_CONNECTED'],
        ['n2', 'NODE_CONNECTED'],
      ],
      'the relay lists the two nodes left',
    );
    const res = await q.collect({ number: 5 });
    t.same(
      res.filter((x) => x.nodeStatus).map((x) => x.nodeStatus),
      [],
      'a new request names no missing node: a node that left the cluster is not unavailable',
    );
  } finally {
    q.close();
  }
  const status = cli('observe', 'status', '--server', relaySocket);
  t.match(status, /Connected Nodes: 2\/2/, `membrane observe status --server counts the nodes left:\n${status}`);
});
