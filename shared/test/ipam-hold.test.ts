// Cluster mode's release quarantine (cluster/ipcache.ts quarantined, ipam holdReleased): an address
// this node withdrew is not handed out again until the cluster store took the withdrawal and the
// other nodes had the quarantine to see it; single-node IPAM (no hold) reuses an address at once.
// The real-packet test is integration/cluster-native-reuse.test.ts.
import t from 'tap';
import { Ipam } from '../src/ipam/index.ts';
import { MemoryStore } from '../src/store/index.ts';
import { ClusterIpcache } from '../src/cluster/ipcache.ts';
import { layout } from '../src/kvstore/layout.ts';
import type { Session } from '../src/kvstore/session.ts';

const ep = (attachment: string) => ({ kind: 'endpoint', attachment, ifName: 'eth0' }) as const;
const tiny = [{ cidr: '10.9.0.0/29', gateway: '10.9.0.1' }]; // .2-.6
/** The quarantine in the cases that check an address is still held after it began: 1.5 s, so that a
 *  test process a loaded machine leaves unscheduled for a few hundred ms does not see it end early
 *  (200-300 ms before). The waits for its end are sleeps past it: a timer never fires early. */
const QUARANTINE_MS = 1500;

t.test('single-node (no hold): a released address may be requested again at once', async (t) => {
  const ipam = await Ipam.open(new MemoryStore());
  await ipam.ensurePool('p', tiny);
  const a = await ipam.allocate('p', ep('a'));
  await ipam.releaseOwner(ep('a'));
  t.equal((await ipam.allocate('p', ep('b'), { ip: a.ip })).ip, a.ip);
});

/** A session of which the test decides what the store took. */
function fakeSession() {
  const written: ((keys: string[]) => void)[] = [];
  const desired = new Map<string, string>();
  const dirty = new Set<string>();
  const session = {
    kv: {},
    set: (k: string, v: string) => {
      desired.set(k, v);
      dirty.add(k);
    },
    delete: (k: string) => {
      desired.delete(k);
      dirty.add(k);
    },
    owns: (k: string) => desired.has(k),
    pending: (k: string) => dirty.has(k),
    onWritten: (fn: (keys: string[]) => void) => written.push(fn),
  };
  const flush = () => {
    const keys = [...dirty];
    dirty.clear();
    for (const fn of written) fn(keys);
  };
  return { session: session as unknown as Session, flush };
}

t.test('cluster mode: held until the store took the withdrawal, then for the quarantine', async (t) => {
  const { session, flush } = fakeSession();
  const L = layout('c');
  const ipc = new ClusterIpcache({
    session,
    layout: L,
    node: 'n1',
    nodeIp: '198.18.0.1',
    onRemoteChange: () => {},
    quarantineMs: QUARANTINE_MS,
  });
  const ipam = await Ipam.open(new MemoryStore());
  ipam.holdReleased((ip) => ipc.quarantined(ip));
  await ipam.ensurePool('p', tiny);

  const a = await ipam.allocate('p', ep('a'));
  ipc.publish({ key: 'a/eth0', ips: [a.ip], identity: 1000 });
  flush();
  t.equal(ipc.quarantined(a.ip), undefined, 'a published address is not held');
  await ipam.releaseOwner(ep('a'));
  ipc.withdraw('a/eth0');

  await t.rejects(ipam.allocate('p', ep('b'), { ip: a.ip }), {
    code: 'address_in_use',
    message: /withdrawal has not reached the cluster store/,
  });
  // Next-fit over the whole range: every other address is taken, so the picked one would be the held one.
  for (const o of ['c', 'd', 'e', 'f']) await ipam.allocate('p', ep(o));
  await t.rejects(ipam.allocate('p', ep('g')), { code: 'address_in_use', message: /no free address that is not held/ });

  flush(); // the store took the delete
  await t.rejects(ipam.allocate('p', ep('b'), { ip: a.ip }), { code: 'address_in_use', message: /released \d+ ms ago/ });
  await new Promise((r) => setTimeout(r, QUARANTINE_MS + 50));
  t.equal((await ipam.allocate('p', ep('b'), { ip: a.ip })).ip, a.ip, 'handed out once the quarantine ended');
  ipc.publish({ key: 'b/eth0', ips: [a.ip], identity: 2000 });
  t.equal(ipc.quarantined(a.ip), undefined, 'published again: not held');
});

t.test('cluster mode: a withdrawal the store failed to take keeps the address held', async (t) => {
  const { session } = fakeSession();
  const ipc = new ClusterIpcache({
    session,
    layout: layout('c'),
    node: 'n1',
    nodeIp: '198.18.0.1',
    onRemoteChange: () => {},
    quarantineMs: 1,
  });
  ipc.publish({ key: 'a/eth0', ips: ['10.9.0.2'], identity: 1000 });
  ipc.withdraw('a/eth0');
  await new Promise((r) => setTimeout(r, 20));
  t.match(ipc.quarantined('10.9.0.2'), /not reached the cluster store/, 'held for as long as the store has not taken it');
});

t.test('cluster mode: a hold survives an agent restart (durable in the IPAM store)', async (t) => {
  const store = new MemoryStore();
  const make = (quarantineMs: number) => {
    const { session, flush } = fakeSession();
    const ipc = new ClusterIpcache({
      session,
      layout: layout('c'),
      node: 'n1',
      nodeIp: '198.18.0.1',
      onRemoteChange: () => {},
      quarantineMs,
    });
    return { ipc, flush };
  };
  const run1 = make(60_000);
  const ipam1 = await Ipam.open(store);
  ipam1.holdReleased((ip) => run1.ipc.quarantined(ip));
  await ipam1.ensurePool('p', tiny);
  const a = await ipam1.allocate('p', ep('a'));
  run1.ipc.publish({ key: 'a/eth0', ips: [a.ip], identity: 1000 });
  run1.flush();
  await ipam1.releaseOwner(ep('a'));
  run1.ipc.withdraw('a/eth0');
  run1.flush(); // the store took the withdrawal; the run dies inside the quarantine

  // Without a hold: the restarted IPAM hands the address out at once.
  const bare = await Ipam.open(store);
  t.equal((await bare.allocate('p', ep('x'), { ip: a.ip })).ip, a.ip, 'a restarted IPAM without holds reuses it (the hole)');
  await bare.releaseOwner(ep('x'));

  const run2 = make(QUARANTINE_MS);
  const ipam2 = await Ipam.open(store);
  ipam2.holdReleased((ip) => run2.ipc.quarantined(ip));
  t.same(ipam2.restoredHolds(), [a.ip], 'the release left a record on disk');
  t.equal(run2.ipc.restoreHolds(ipam2.restoredHolds()), 1);
  await t.rejects(
    ipam2.allocate('p', ep('b'), { ip: a.ip }),
    { code: 'address_in_use', message: /not reached the cluster store/ },
    'held before the store was seen',
  );
  // The mirror lists the store: this node's entry is gone (or still there: still held).
  const mirror = run2.ipc.mirror as unknown as { resyncs: number; items: Map<string, { node: string; identity: number }> };
  mirror.resyncs = 1;
  mirror.items.set(a.ip, { node: 'n1', identity: 1000 });
  await t.rejects(
    ipam2.allocate('p', ep('b'), { ip: a.ip }),
    { code: 'address_in_use' },
    'held while the store has the earlier run entry',
  );
  mirror.items.delete(a.ip);
  await t.rejects(
    ipam2.allocate('p', ep('b'), { ip: a.ip }),
    { code: 'address_in_use', message: /released before this agent restarted/ },
    'then for the quarantine',
  );
  await new Promise((r) => setTimeout(r, QUARANTINE_MS + 50));
  t.equal((await ipam2.allocate('p', ep('b'), { ip: a.ip })).ip, a.ip, 'handed out once the quarantine ended');
  t.same((await Ipam.open(store)).restoredHolds(), [], 'and its record is gone');
});

t.test('cluster mode: held from the moment the IPAM frees it, before the endpoint withdrew it', async (t) => {
  const { session, flush } = fakeSession();
  const ipc = new ClusterIpcache({
    session,
    layout: layout('c'),
    node: 'n1',
    nodeIp: '198.18.0.1',
    onRemoteChange: () => {},
    quarantineMs: QUARANTINE_MS,
  });
  const ipam = await Ipam.open(new MemoryStore());
  ipam.holdReleased(
    (ip) => ipc.quarantined(ip),
    (ip) => ipc.hold(ip),
  );
  await ipam.ensurePool('p', tiny);
  const a = await ipam.allocate('p', ep('a'));
  ipc.publish({ key: 'a/eth0', ips: [a.ip], identity: 1000 });
  flush();
  const mirror = ipc.mirror as unknown as { resyncs: number; items: Map<string, { node: string; identity: number }> };
  mirror.resyncs = 1;
  mirror.items.set(a.ip, { node: 'n1', identity: 1000 });

  // The IPAM's release is written; the endpoint's delete hooks (withdraw) have not run yet.
  await ipam.releaseOwner(ep('a'));
  await t.rejects(
    ipam.allocate('p', ep('b'), { ip: a.ip }),
    { code: 'address_in_use' },
    'held before the withdrawal even started',
  );
  ipc.withdraw('a/eth0');
  await t.rejects(ipam.allocate('p', ep('b'), { ip: a.ip }), {
    code: 'address_in_use',
    message: /not reached the cluster store/,
  });
  flush();
  mirror.items.delete(a.ip);
  await t.rejects(ipam.allocate('p', ep('b'), { ip: a.ip }), { code: 'address_in_use', message: /released \d+ ms ago/ });
  await new Promise((r) => setTimeout(r, QUARANTINE_MS + 50));
  t.equal((await ipam.allocate('p', ep('b'), { ip: a.ip })).ip, a.ip, 'handed out once the quarantine ended');

  // An address never published (a create rolled back): held for the quarantine, not for ever.
  const c = await ipam.allocate('p', ep('c'));
  await ipam.releaseOwner(ep('c'));
  await t.rejects(ipam.allocate('p', ep('d'), { ip: c.ip }), { code: 'address_in_use', message: /released \d+ ms ago/ });
  await new Promise((r) => setTimeout(r, QUARANTINE_MS + 50));
  t.equal((await ipam.allocate('p', ep('d'), { ip: c.ip })).ip, c.ip, 'then handed out');
});
