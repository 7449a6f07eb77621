// The DNS proxy's bounds on TCP client connections with real packets (dns/tcp-clients.ts): the total
// over all pods (--dns-proxy-tcp-max) and the idle timeout (--dns-proxy-tcp-idle-timeout). The
// per-client bound is in dns-fqdn-attacks.test.ts. Two agents (lib/dns-fqdn-file.ts), because an idle
// timeout short enough to watch would close the connections the total-limit test holds. A query in
// flight on a connection the proxy closes gets a flow record saying which bound closed it.
import t, { type Test } from 'tap';
import { dnsFqdnForFile, until } from './lib/dns-fqdn-file.ts';
import { dnsTcpDriver, type ConnState } from './lib/dns-tcp-driver.ts';
import { nodeIn, untilListening } from './lib/tcp.ts';
import { ObserverClient } from '../shared/src/flows/client.ts';
import type { Flow } from '../shared/src/flows/types.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const MAX = 12;
const IDLE_S = 3;
// The per-client limit follows a total set below its default 64 (config-values.ts), so only the total binds here.
const total = dnsFqdnForFile(t, { agentArgs: ['--dns-proxy-tcp-max', `${MAX}`] });
const idle = dnsFqdnForFile(t, { agentArgs: ['--dns-proxy-tcp-idle-timeout', `${IDLE_S}`] });

type Conns = { open: number; evicted: number };
const conns = async (f: typeof total) =>
  ((await f.agent.client.status()) as { dns?: { tcpConnections?: Conns } }).dns?.tcpConnections;
const count = (s: ConnState[], k: 'connected' | 'closed') => s.filter((c) => c[k]).length;

t.test(
  `two pods opening 8 idle TCP connections each to the DNS proxy (--dns-proxy-tcp-max ${MAX}): 4 closed, 12 answer`,
  async (t) => {
    const f = total;
    await f.pod('client2', { app: 'client' });
    const before = await until('the DNS proxy status', () => conns(f));
    t.equal(before.open, 0, 'no connection open before');
    const a = await dnsTcpDriver(f.nsOf.client, f.W.dns);
    const b = await dnsTcpDriver(f.nsOf.client2, f.W.dns);
    t.teardown(() => {
      a.close();
      b.close();
    });
    a.open(8);
    await until("the first pod's 8 connections in the proxy", async () => ((await conns(f))?.open === 8 ? true : undefined));
    b.open(8);
    const during = await until('the proxy to have closed 4', async () => {
      const c = await conns(f);
      return c && c.evicted - before.evicted >= 4 ? c : undefined;
    });
    t.ok(during.open <= MAX, `at most ${MAX} open in the proxy (${during.open})`);
    const [sa, sb] = await until('both pods to see all their connections settle', async () => {
      const s = [await a.state(), await b.state()];
      return count(s[0], 'connected') === 8 && count(s[1], 'connected') === 8 && count(s[0], 'closed') >= 4 ? s : undefined;
    });
    t.same(
      [count(sa, 'closed'), count(sb, 'closed')],
      [4, 0],
      "the 4 closed are the first pod's (the least recently active), the second pod's 8 all stay",
    );
    t.equal((await conns(f))!.evicted - before.evicted, 4, 'exactly 4 closed to stay within the total');
    t.equal((await conns(f))!.open, MAX, `${MAX} open in the proxy`);
    const kept = (s: ConnState[]) => s.flatMap((c, i) => (c.closed ? [] : [i]));
    for (const i of kept(sa)) a.query(i, 'api.test.internal');
    for (const i of kept(sb)) b.query(i, 'api.test.internal');
    const answered = await until('an answer on each connection kept', async () => {
      const s = [await a.state(), await b.state()];
      const n = s.flat().filter((c) => c.answers > 0).length;
      return n >= MAX ? s : undefined;
    });
    t.same(
      answered.map((s) => s.filter((c) => !c.closed && c.answers === 1).length),
      [4, 8],
      'each of the 12 kept connections answers its query (4 of the first pod, 8 of the second)',
    );
    t.equal((await conns(f))!.evicted - before.evicted, 4, 'and answering closed nothing more');
    a.close();
    b.close();
    const after = await until('every connection gone from the proxy once the pods closed them', async () => {
      const c = await conns(f);
      return c?.open === 0 ? c : undefined;
    });
    t.equal(after.open, 0, 'all freed: the proxy holds no connection once the pods closed theirs');
  },
);

t.test(`--dns-proxy-tcp-idle-timeout ${IDLE_S}: an idle connection is closed, one that keeps asking is not`, async (t) => {
  const f = idle;
  const d = await dnsTcpDriver(f.nsOf.client, f.W.dns);
  t.teardown(() => d.close());
  d.open(2);
  await until('both connections in the proxy', async () => ((await conns(f))?.open === 2 ? true : undefined));
  // Connection 1 asks every 250 ms, well inside the timeout; connection 0 never sends.
  d.every(1, 250, 'api.test.internal');
  // 20 s: the default timeout (30 s) would not close it in time, so the flag is what is tested.
  const s = await until(
    'the idle connection to be closed',
    async () => {
      const st = await d.state();
      return st[0].closed ? st : undefined;
    },
    20_000,
  );
  t.notOk(s[1].closed, 'the connection that keeps asking is still open when the idle one is closed');
  const answers = s[1].answers;
  const later = await until('the active connection to answer again after that', async () => {
    const st = await d.state();
    return st[1].answers > answers || st[1].closed ? st : undefined;
  });
  t.same([later[1].closed, later[1].answers > answers], [false, true], 'and it still answers');
  t.equal((await conns(f))!.open, 1, 'the proxy holds only the active one');
  t.equal((await conns(f))!.evicted, 0, 'the idle close is no limit eviction');
  d.stop(1);
  await until(
    'the formerly active connection, now idle, to be closed too',
    async () => ((await d.state())[1].closed ? true : undefined),
    20_000,
  );
  t.equal((await conns(f))!.open, 0, 'none left in the proxy');
});

// A DNS server on the policy's second server address (evilDns) that never finishes an answer: it
// sends a length prefix of 65,535 and then a byte every 500 ms, so the proxy's upstream connection
// is never idle (its upstream timeout never fires) and the query stays in flight until the proxy
// closes the client's connection.
const TRICKLE = `
const net = require('net');
net.createServer((s) => {
  s.on('error', () => {});
  s.once('data', () => { s.write(Buffer.from([0xff, 0xff])); const t = setInterval(() => s.write('x'), 500); s.on('close', () => clearInterval(t)); });
}).listen(53, process.argv[1], () => process.stdout.write('listening\\n'));
`;

async function slowQuery(t: Test, f: typeof total, pod: string) {
  const server = nodeIn(f.world, TRICKLE, [f.W.evilDns]);
  f.children.push(server);
  await untilListening(server, 'the trickling DNS server', 60_000);
  t.teardown(() => server.kill('SIGKILL'));
  const observer = new ObserverClient(f.agent.observerSocket);
  t.teardown(() => observer.close());
  /** The proxy's flow of `kind` for slow.test.internal, once it is there. */
  const flowOf = (kind: 'REQUEST' | 'RESPONSE', what: string) =>
    until(what, async () =>
      (await observer.collect({ number: 1000, whitelist: [{ eventType: [{ type: 129 }] }] }))
        .map((x) => x.flow as Flow)
        .find((x) => x?.l7?.type === kind && x.l7.dns?.query === 'slow.test.internal.'),
    );
  const d = await dnsTcpDriver(f.nsOf[pod]!, f.W.evilDns);
  t.teardown(() => d.close());
  d.open(1);
  await until('the connection in the proxy', async () => ((await conns(f))?.open === 1 ? true : undefined));
  d.query(0, 'slow.test.internal');
  await flowOf('REQUEST', 'the query forwarded upstream');
  return { d, flowOf };
}

t.test('a query in flight on a connection --dns-proxy-tcp-max closed: its flow names the limit', async (t: Test) => {
  const f = total;
  await f.pod('client3', { app: 'client' });
  const { d, flowOf } = await slowQuery(t, f, 'client');
  const before = (await conns(f))!.evicted;
  const b = await dnsTcpDriver(f.nsOf.client3!, f.W.dns);
  t.teardown(() => b.close());
  b.open(MAX); // the 12th takes the total past MAX: the least recently active, the slow query's, goes
  const answer = await flowOf('RESPONSE', "the slow query's response record");
  t.equal(answer.verdict, 'ERROR', 'the query went unanswered');
  t.equal(
    answer.Summary,
    `DNS Answer connection evicted: over ${MAX} connections (--dns-proxy-tcp-max) (Proxy slow.test.internal. A)`,
    'its response record says which limit closed the connection',
  );
  await until('the pod to see its connection closed', async () => ((await d.state())[0]!.closed ? true : undefined));
  t.equal((await conns(f))!.evicted - before, 1, 'one eviction');
});

t.test('a query in flight on a connection the idle timeout closed: its flow says so', async (t: Test) => {
  const f = idle;
  const { d, flowOf } = await slowQuery(t, f, 'client');
  const answer = await flowOf('RESPONSE', "the slow query's response record");
  t.equal(answer.verdict, 'ERROR', 'the query went unanswered');
  t.equal(
    answer.Summary,
    `DNS Answer connection idle for ${IDLE_S} s (--dns-proxy-tcp-idle-timeout) (Proxy slow.test.internal. A)`,
    'its response record says the idle timeout closed the connection',
  );
  await until('the pod to see its connection closed', async () => ((await d.state())[0]!.closed ? true : undefined));
});
