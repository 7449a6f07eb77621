// The agent's policies survive what a node does to it (policy/store-backend.ts: one store key per
// policy): SIGKILL right after an acknowledged import and delete, and a stored policy the agent
// cannot use, which `membrane status` reports while every other policy loads (the maps held at their
// last enforced state and other changes refused until it is imported again or deleted).
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { startAgent, type TestAgent } from './lib/agent.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { encodeRecord } from '../shared/src/store/journal.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const policy = (name: string, port: number, namespace?: string) =>
  JSON.stringify({
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name, ...(namespace ? { namespace } : {}) },
    spec: {
      endpointSelector: { matchLabels: { app: 'web' } },
      ingress: [{ fromCIDR: ['198.18.0.0/24'], toPorts: [{ ports: [{ port: String(port), protocol: 'TCP' }] }] }],
    },
  });

let agent: TestAgent | undefined;
t.teardown(() => agent?.cleanup());

t.test('SIGKILL right after acknowledged changes: after a restart the policies are exactly those acknowledged', async (t) => {
  agent = await startAgent();
  const pc = new PolicyClient(agent.client);
  await pc.import(policy('a', 80));
  await pc.import(policy('b', 81, 'shop'));
  await pc.import(policy('gone', 82));
  await pc.delete(['gone']);
  await pc.import(policy('a', 8080)); // replaced
  const last = await pc.import(policy('c', 83));
  await agent.kill9(); // at once: no chance to flush anything
  const acknowledged = await (async () => {
    await agent!.restart();
    return pc.list();
  })();
  t.equal(acknowledged.revision, last.revision, 'the revision of the last acknowledged change');
  t.same(
    acknowledged.items.map((p) => [p.name, p.revision]).sort(),
    [
      ['a', 2],
      ['c', 1],
      ['shop/b', 1],
    ],
    'every acknowledged policy, at its revision; the deleted one gone',
  );
  t.match(
    (await pc.get('a')).source,
    { spec: { ingress: [{ toPorts: [{ ports: [{ port: '8080' }] }] }] } },
    'the replaced policy as last imported',
  );
  t.equal((await pc.status()).policyEntries, 0, 'no endpoint selected: no entries (and no error)');
});

t.test('a stored policy the agent cannot use is reported; the others load', async (t) => {
  const a = agent!;
  const pc = new PolicyClient(a.client);
  await a.kill9();
  // What a damaged or foreign write leaves: a well-framed record whose value is no policy record.
  const file = path.join(a.stateDir, 'store', 'journal.log');
  const buf = fs.readFileSync(file);
  const end = buf.lastIndexOf(0x0a) + 1;
  const rec = Buffer.from(encodeRecord({ op: 'put', key: 'policy/records/broken', value: { name: 'broken', policy: 'x' } }));
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, rec, 0, rec.length, end);
  fs.closeSync(fd);
  await a.restart();
  t.same((await pc.list()).items.map((p) => p.name).sort(), ['a', 'c', 'shop/b'], 'the other policies load');
  const status = await a.client.status();
  t.match(
    status.store?.problem ?? '',
    /1 stored policy not loaded.*policy\/records\/broken \(no valid policy number\)/,
    'status says which and why',
  );
  t.match(status.store?.problem ?? '', /policy maps held at the last enforced state/, 'and that the maps are held');
  // Fail closed: the set without "broken" is not enforced; changes other than "broken" are refused.
  const refused = await pc.import(policy('d', 85)).then(
    () => undefined,
    (e: unknown) => e as { status?: number; message?: string },
  );
  t.equal(refused?.status, 503, 'another import while a stored policy is unreadable: 503');
  t.match(refused?.message ?? '', /policy\/records\/broken.*import "broken" again/, 'naming the key and what to do');
  t.equal((await pc.list()).items.length, 3, 'nothing imported');
  await pc.import(policy('broken', 84));
  t.same(
    (await pc.list()).items.map((p) => p.name).sort(),
    ['a', 'broken', 'c', 'shop/b'],
    'importing the name again replaces it',
  );
  t.equal((await a.client.status()).store?.problem, undefined, 'and the problem is gone');
});
