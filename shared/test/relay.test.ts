// The relay's pure parts: merging the nodes' histories by time, keeping the newest (or oldest) N,
// and the follow sort buffer. The relay itself runs on the harness (integration/cluster-relay.test.ts).
import t from 'tap';
import { byTime, mergeOrdered, selectHistory, SortBuffer, timeNs } from '../src/relay/merge.ts';
import { observerServerName } from '../src/relay/peers.ts';
import { observerTls } from '../src/cli/observe.ts';

const at = (ms: number, node: string, flow = true) => ({
  time: { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 },
  nodeName: node,
  ...(flow ? { flow: {} } : {}),
});

t.test('histories merge by time across nodes, exactly to the nanosecond', async (t) => {
  const n1 = [at(1000, 'n1'), at(1003, 'n1'), at(1010, 'n1')];
  const n2 = [at(1001, 'n2'), at(1003, 'n2'), at(1020, 'n2')];
  const merged = mergeOrdered([n1, n2, []]);
  t.same(
    merged.map((r) => `${r.nodeName}@${timeNs(r.time) / 1_000_000n}`),
    ['n1@1000', 'n2@1001', 'n1@1003', 'n2@1003', 'n1@1010', 'n2@1020'],
  );
  t.equal(
    byTime({ time: { seconds: 5, nanos: 1 } }, { time: { seconds: 5, nanos: 2 } }),
    -1,
    'one nanosecond apart still orders',
  );
  t.equal(timeNs(undefined), 0n);
});

t.test('the newest N (or the oldest with first) of the whole cluster; other responses stay where they fall', async (t) => {
  const merged = mergeOrdered([
    [at(1, 'n1'), at(3, 'n1'), at(5, 'n1')],
    [at(2, 'n2'), at(4, 'n2', false), at(6, 'n2')],
  ]);
  t.same(
    selectHistory(merged, 2, false).map((r) => timeNs(r.time) / 1_000_000n),
    [5n, 6n],
  );
  t.same(
    selectHistory(merged, 3, false).map((r) => timeNs(r.time) / 1_000_000n),
    [3n, 4n, 5n, 6n],
    'a lost-events response between kept flows stays',
  );
  t.same(
    selectHistory(merged, 2, true).map((r) => timeNs(r.time) / 1_000_000n),
    [1n, 2n],
  );
  t.equal(selectHistory(merged, 0, false).length, 6, '0 keeps everything');
  t.equal(selectHistory(merged, 100, false).length, 6);
});

t.test(
  'follow: the sort buffer releases what is older than its window, oldest first, and never holds more than its limit',
  async (t) => {
    const b = new SortBuffer<ReturnType<typeof at>>(200, 3);
    b.push(at(10_100, 'n1'));
    b.push(at(10_050, 'n2')); // arrives late from another node
    b.push(at(10_290, 'n1'));
    t.same(
      b.drain(10_240).map((r) => r.nodeName),
      [],
      'nothing is 200 ms old yet',
    );
    t.same(
      b.drain(10_300).map((r) => timeNs(r.time) / 1_000_000n),
      [10_050n, 10_100n],
      'the two old enough, in time order',
    );
    t.equal(b.size, 1);
    for (const ms of [10_291, 10_292, 10_293]) b.push(at(ms, 'n2'));
    t.same(
      b.drain(10_300).map((r) => timeNs(r.time) / 1_000_000n),
      [10_290n],
      'over the limit the oldest goes early',
    );
    t.same(
      b.flush().map((r) => timeNs(r.time) / 1_000_000n),
      [10_291n, 10_292n, 10_293n],
    );
  },
);

t.test('observer certificates are named per node and cluster', async (t) => {
  t.equal(observerServerName('prod', 'n1'), 'n1.prod.observer.membrane', 'what scripts/cluster-certs.sh writes');
});

t.test(
  "membrane observe's --tls flags (hubble's): TLS only towards --server, CA files concatenated, cert and key together",
  async (t) => {
    const files: Record<string, string> = { 'a.pem': 'A\n', 'b.pem': 'B\n', 'c.pem': 'CERT', 'c.key': 'KEY' };
    const read = (f: string) => {
      if (!(f in files)) throw Object.assign(new Error(`ENOENT: ${f}`), { code: 'ENOENT' });
      return Buffer.from(files[f]);
    };
    t.equal(observerTls({ server: 'relay:4245' }, read), undefined, 'no --tls flag: plaintext');
    t.same(observerTls({ server: 'relay:4245', tls: true }, read), {}, '--tls alone: the system CAs');
    const full = observerTls(
      {
        server: 'relay:4245',
        tlsCaCertFiles: ['a.pem', 'b.pem'],
        tlsClientCertFile: 'c.pem',
        tlsClientKeyFile: 'c.key',
        tlsServerName: 'relay.c1.observer.membrane',
      },
      read,
    )!;
    t.equal(full.ca?.toString(), 'A\nB\n', 'every CA file, one bundle');
    t.match(full, { serverName: 'relay.c1.observer.membrane' });
    t.equal(full.cert?.toString(), 'CERT');
    t.equal(full.key?.toString(), 'KEY');
    t.throws(
      () => observerTls({ observerSocket: '/run/x.sock', tls: true }, read),
      /need|give it too/,
      'TLS without --server: refused',
    );
    t.throws(
      () => observerTls({ server: 'r:1', tlsClientCertFile: 'c.pem' }, read),
      /go together/,
      'a certificate without its key: refused',
    );
    t.throws(
      () => observerTls({ server: 'r:1', tlsCaCertFiles: ['missing.pem'] }, read),
      /--tls-ca-cert-files missing\.pem: no such file/,
      'a missing file is named',
    );
  },
);
