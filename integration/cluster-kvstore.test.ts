// The cluster store layer against a real etcd (Debian's etcd-server, on loopback, data dir of our
// own): transactions with prefix compares, prefix mirrors that resync by revision after a cut
// (deletes made while cut do not survive), owned keys written again after an outage, and identity
// allocation that gives one label set one number when several nodes race.
import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startEtcd, type TestEtcd } from './lib/etcd.ts';
import { connectEtcd, type Kv } from '../shared/src/kvstore/kv.ts';
import { layout } from '../shared/src/kvstore/layout.ts';
import { PrefixMirror } from '../shared/src/kvstore/mirror.ts';
import { Session } from '../shared/src/kvstore/session.ts';
import { ClusterIdentities } from '../shared/src/cluster/identities.ts';
import { IdentityAllocator } from '../shared/src/identity/allocator.ts';
import { randomId } from './lib/agent.ts';
import { eventually } from './lib/proc.ts';
import { makeTestPki } from './lib/tls.ts';
import { kvstoreOptions } from '../shared/src/kvstore/config.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-kvt-'));
let etcd: TestEtcd;
const closers: (() => unknown)[] = [];

/** A TCP relay to etcd we can cut (every connection dropped, new ones refused) and mend. */
async function cuttableProxy(target: string): Promise<{ url: string; cut(): void; mend(): void; close(): void }> {
  const u = new URL(target);
  const socks = new Set<net.Socket>();
  let open = true;
  const server = net.createServer((c) => {
    if (!open) {
      c.destroy();
      return;
    }
    const up = net.connect(Number(u.port), u.hostname);
    socks.add(c);
    socks.add(up);
    c.pipe(up).pipe(c);
    const done = () => {
      c.destroy();
      up.destroy();
      socks.delete(c);
      socks.delete(up);
    };
    c.on('error', done);
    up.on('error', done);
    c.on('close', done);
    up.on('close', done);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    cut: () => {
      open = false;
      for (const s of socks) s.destroy();
    },
    mend: () => {
      open = true;
    },
    close: () => {
      open = false;
      for (const s of socks) s.destroy();
      server.close();
    },
  };
}

async function kv(url = etcd.clientUrl): Promise<Kv> {
  const k = await connectEtcd({ endpoints: [url], timeoutMs: 1_000 });
  closers.push(() => k.close());
  return k;
}

const until = (what: string, fn: () => boolean | Promise<boolean>, ms = 10_000) => eventually(what, fn, ms, 25);

t.before(async () => {
  etcd = await startEtcd({ dir });
});
t.teardown(async () => {
  for (const c of closers.reverse()) {
    try {
      await c();
    } catch {
      /* best effort */
    }
  }
  await etcd?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

t.test('a prefix compare holds for "no key under it" and fails once one exists', async (t) => {
  const k = await kv();
  const p = `t/${randomId()}/refs/`;
  const guard = [{ key: p, prefix: true, target: 'version' as const, result: '=' as const, value: 0 }];
  t.equal((await k.txn(guard, [{ type: 'put', key: `t/${p}ok`, value: '1' }])).succeeded, true, 'empty prefix: compare holds');
  await k.put(`${p}n1`, 'x');
  t.equal(
    (await k.txn(guard, [{ type: 'put', key: `t/${p}ok`, value: '2' }])).succeeded,
    false,
    'a key under the prefix: compare fails',
  );
});

t.test('a mirror cut off from the store resyncs by revision and keeps nothing that was deleted meanwhile', async (t) => {
  const proxy = await cuttableProxy(etcd.clientUrl);
  closers.push(() => proxy.close());
  const direct = await kv();
  const viaProxy = await kv(proxy.url);
  const p = `t/${randomId()}/ipcache/`;
  await direct.put(`${p}10.0.0.1`, 'a');
  await direct.put(`${p}10.0.0.2`, 'b');
  const seen: { resync: boolean; deletes: string[] }[] = [];
  const m = new PrefixMirror<string>(viaProxy, p, {
    decode: (v) => v,
    onChange: (c) => {
      seen.push({ resync: c.resync, deletes: c.deletes });
    },
  });
  closers.push(() => m.stop());
  await m.start();
  t.same([...m.items.keys()].sort(), ['10.0.0.1', '10.0.0.2'], 'initial list');
  await direct.put(`${p}10.0.0.3`, 'c');
  await until('watch event', () => m.items.has('10.0.0.3'));
  proxy.cut();
  await until('mirror notices the cut', () => !m.live);
  await direct.delete(`${p}10.0.0.1`);
  await direct.put(`${p}10.0.0.2`, 'b2');
  await direct.put(`${p}10.0.0.4`, 'd');
  t.ok(m.items.has('10.0.0.1'), 'while cut off, the mirror keeps what it knew');
  proxy.mend();
  await until('mirror resynced', () => m.live && m.items.get('10.0.0.2') === 'b2', 15_000);
  t.same(
    Object.fromEntries(m.items),
    { '10.0.0.2': 'b2', '10.0.0.3': 'c', '10.0.0.4': 'd' },
    'deleted entry gone, changed and new ones there',
  );
  t.ok(
    seen.some((s) => s.resync && s.deletes.includes('10.0.0.1')),
    'the resync reported the delete',
  );
  await direct.delete(`${p}10.0.0.3`);
  await until('watching again after the resync', () => !m.items.has('10.0.0.3'));
});

t.test('owned keys are written again after an outage and after the lease is lost', async (t) => {
  const proxy = await cuttableProxy(etcd.clientUrl);
  closers.push(() => proxy.close());
  const direct = await kv();
  const s = new Session({ kv: await kv(proxy.url), leaseTtlSeconds: 2, statusIntervalMs: 200 });
  closers.push(() => s.close({ revoke: true }));
  await s.start(5_000);
  const p = `t/${randomId()}/`;
  s.set(`${p}node`, 'n1');
  await s.flushed();
  t.equal((await direct.get(`${p}node`))?.value, 'n1', 'written under the lease');
  proxy.cut();
  s.set(`${p}ep`, 'e1');
  s.delete(`${p}node`);
  await new Promise((r) => setTimeout(r, 300));
  t.equal(await direct.get(`${p}ep`), undefined, 'nothing written while the store is unreachable');
  // Cut off longer than the TTL: the lease expires in etcd and its keys with it.
  await new Promise((r) => setTimeout(r, 4_500));
  proxy.mend();
  await until('pending writes done under a new lease', async () => (await direct.get(`${p}ep`))?.value === 'e1', 15_000);
  t.equal(await direct.get(`${p}node`), undefined, 'the key deleted while cut off is gone');
  t.equal(s.status().connected, true, 'session connected again');
});

t.test('three nodes racing for identities: one label set, one number', async (t) => {
  const cluster = `t${randomId()}`;
  const L = layout(cluster);
  const nodes = await Promise.all(
    ['n1', 'n2', 'n3'].map(async (node) => {
      const s = new Session({ kv: await kv(), leaseTtlSeconds: 10 });
      closers.push(() => s.close({ revoke: true }));
      await s.start(5_000);
      const backend = new ClusterIdentities({ session: s, layout: L, node });
      closers.push(() => backend.stop());
      const alloc = await IdentityAllocator.open({ backend, randomIds: true });
      await backend.attach(alloc);
      return { node, alloc, backend, session: s };
    }),
  );
  const labelSets = Array.from({ length: 12 }, (_, i) => ({ 'k8s:app': `app${i % 6}`, 'k8s:tier': i % 2 ? 'a' : 'b' }));
  const results = await Promise.all(
    nodes.flatMap((n) => labelSets.map(async (l) => ({ node: n.node, key: JSON.stringify(l), id: await n.alloc.resolve(l) }))),
  );
  const byKey = new Map<string, Set<number>>();
  for (const r of results) byKey.set(r.key, (byKey.get(r.key) ?? new Set()).add(r.id));
  t.ok(
    [...byKey.values()].every((ids) => ids.size === 1),
    'every label set has one number on every node',
  );
  const ids = [...byKey.values()].map((s) => [...s][0]);
  t.equal(new Set(ids).size, byKey.size, 'different label sets have different numbers');
  const direct = await kv();
  const stored = await direct.list(L.identityIds);
  t.equal(stored.items.length, byKey.size, 'one id record per label set in the store');
  // A node that lost a race references the winner's number through its session's writer.
  await Promise.all(nodes.map((n) => n.session.flushed()));
  const refs = await direct.list(L.identityRefs);
  t.equal(refs.items.length, byKey.size * 3, 'each node references each identity once');
});

t.test('TLS: --kvstore-ca/--kvstore-cert/--kvstore-key reach an etcd that requires client certificates', async (t) => {
  const tdir = fs.mkdtempSync(path.join(dir, 'tls-'));
  const pki = makeTestPki(tdir);
  const secure = await startEtcd({
    dir: tdir,
    tls: { ca: pki.ca, cert: pki.serverCert, key: pki.serverKey, clientCert: pki.clientCert, clientKey: pki.clientKey },
  });
  closers.push(() => secure.stop());
  t.match(secure.clientUrl, /^https:/);
  const opts = kvstoreOptions({
    kvstore: 'etcd',
    kvstoreEndpoints: secure.clientUrl,
    kvstoreCa: pki.ca,
    kvstoreCert: pki.clientCert,
    kvstoreKey: pki.clientKey,
  })!;
  const k = await connectEtcd({ ...opts.kv, timeoutMs: 2_000 });
  closers.push(() => k.close());
  await k.put('t/tls', 'ok');
  t.equal((await k.get('t/tls'))?.value, 'ok', 'read and write over TLS with a client certificate');
  const noCert = await connectEtcd({ endpoints: [secure.clientUrl], tls: { ca: fs.readFileSync(pki.ca) }, timeoutMs: 1_000 });
  closers.push(() => noCert.close());
  const err = await noCert.get('t/tls').then(
    () => undefined,
    (e: unknown) => e as Error,
  );
  t.ok(err, `without a client certificate the store refuses: ${err?.message}`);
});
