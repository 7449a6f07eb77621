import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Ipam } from '../src/ipam/index.ts';
import { MemoryStore } from '../src/store/index.ts';
import { JournalStore } from '../src/store/journal.ts';

/** An endpoint owner for tests. */
const ep = (attachment: string) => ({ kind: 'endpoint', attachment, ifName: 'eth0' }) as const;

const v4 = [{ cidr: '10.9.0.0/24', gateway: '10.9.0.1' }];

t.test('allocates, reserves network/gateway/broadcast, and names the pool when exhausted', async (t) => {
  const ipam = await Ipam.open(new MemoryStore());
  await ipam.ensurePool('tiny', [{ cidr: '10.9.0.0/29', gateway: '10.9.0.1' }]);
  const got: string[] = [];
  for (let i = 0; i < 5; i++) got.push((await ipam.allocate('tiny', ep(`c${i}`))).ip);
  t.same(got, ['10.9.0.2', '10.9.0.3', '10.9.0.4', '10.9.0.5', '10.9.0.6'], 'not .0 (network), .1 (gateway) or .7 (broadcast)');
  await t.rejects(ipam.allocate('tiny', ep('c6')), { code: 'pool_exhausted', message: /"tiny" is exhausted/ });
  await ipam.releaseOwner(ep('c2'));
  t.equal((await ipam.allocate('tiny', ep('c7'))).ip, '10.9.0.4', 'a released address is reused once the range wraps');
});

t.test('the same owner gets the same address again (a retried ADD)', async (t) => {
  const ipam = await Ipam.open(new MemoryStore());
  await ipam.ensurePool('p', v4);
  const a = await ipam.allocate('p', ep('owner-a'));
  const b = await ipam.allocate('p', ep('owner-a'));
  t.equal(a.ip, b.ip);
  t.equal(ipam.allocations().length, 1);
});

t.test('requested addresses: in use, out of range, gateway', async (t) => {
  const ipam = await Ipam.open(new MemoryStore());
  await ipam.ensurePool('p', v4);
  t.equal((await ipam.allocate('p', ep('a'), { ip: '10.9.0.50' })).ip, '10.9.0.50');
  await t.rejects(ipam.allocate('p', ep('b'), { ip: '10.9.0.50' }), {
    code: 'address_in_use',
    message: /already allocated to ep:a\/eth0/,
  });
  await t.rejects(ipam.allocate('p', ep('b'), { ip: '10.8.0.5' }), { code: 'address_out_of_range' });
  await t.rejects(ipam.allocate('p', ep('b'), { ip: '10.9.0.1' }), { code: 'address_in_use', message: /gateway/ });
  await t.rejects(ipam.allocate('p', ep('b'), { ip: '10.9.0.255' }), { code: 'address_out_of_range', message: /broadcast/ });
  await t.rejects(ipam.allocate('nope', ep('b')), { code: 'network_not_found', message: /"nope"/ });
});

t.test('release is idempotent', async (t) => {
  const ipam = await Ipam.open(new MemoryStore());
  await ipam.ensurePool('p', v4);
  const { ip } = await ipam.allocate('p', ep('a'));
  t.equal(await ipam.releaseIp('p', ip), true);
  t.equal(await ipam.releaseIp('p', ip), false);
  t.equal(await ipam.releaseOwner(ep('a')), 0);
});

t.test('dual-stack pools allocate per family', async (t) => {
  const ipam = await Ipam.open(new MemoryStore());
  await ipam.ensurePool('ds', [
    { cidr: '10.9.0.0/24', gateway: '10.9.0.1' },
    { cidr: 'fd00:9::/64', gateway: 'fd00:9::1' },
  ]);
  t.equal((await ipam.allocate('ds', ep('a'), { family: 4 })).ip, '10.9.0.2');
  t.equal((await ipam.allocate('ds', ep('a'), { family: 6 })).ip, 'fd00:9::2');
  t.equal(await ipam.releaseOwner(ep('a')), 2);
});

t.test('200 concurrent allocations get 200 distinct addresses, all durable', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-ipam-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new JournalStore(dir);
  const ipam = await Ipam.open(store);
  await ipam.ensurePool('big', [{ cidr: '10.10.0.0/16', gateway: '10.10.0.1' }]);
  const results = await Promise.all(Array.from({ length: 200 }, (_, i) => ipam.allocate('big', ep(`c${i}`))));
  t.equal(new Set(results.map((r) => r.ip)).size, 200);
  // A new process reading the same state (as after a crash) sees every address it handed out.
  store.close();
  const reopened = await Ipam.open(new JournalStore(dir));
  t.equal(reopened.allocations().length, 200);
  for (const r of results) t.ok(reopened.ownerOf('big', r.ip), `${r.ip} persisted`);
  const next = await reopened.allocate('big', ep('after-crash'));
  t.notOk(
    results.some((r) => r.ip === next.ip),
    'no address handed out twice after a restart',
  );
});

t.test('a torn last journal line (crash mid-append) never corrupts the state', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-ipam-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new JournalStore(dir);
  const ipam = await Ipam.open(store);
  await ipam.ensurePool('p', v4);
  await ipam.allocate('p', ep('a'));
  store.close();
  fs.appendFileSync(path.join(dir, 'journal.log'), '{"op":"put","key":"ipam/p/10.9.0.3","val');
  const reopened = await Ipam.open(new JournalStore(dir));
  t.same(reopened.ownerOf('p', '10.9.0.2'), ep('a'));
  t.equal(reopened.ownerOf('p', '10.9.0.3'), undefined, 'the unacknowledged half line is ignored');
});

t.test('compaction keeps every allocation', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-ipam-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new JournalStore(dir);
  const ipam = await Ipam.open(store);
  await ipam.ensurePool('p', v4);
  for (let i = 0; i < 20; i++) await ipam.allocate('p', ep(`o${i}`));
  await ipam.releaseOwner(ep('o3'));
  store.compact();
  await ipam.allocate('p', ep('late'));
  store.close();
  const reopened = await Ipam.open(new JournalStore(dir));
  t.equal(reopened.allocations().length, 20, '20 - 1 released + 1 late');
  t.equal(reopened.ownerOf('p', '10.9.0.5'), undefined, 'the released address stays free');
  t.equal(fs.statSync(path.join(dir, 'journal.log')).size > 0, true, 'the allocation after compaction is journaled');
});

/** A store whose writes fail while `full` is set, as on a full disk. */
class FullDiskStore extends MemoryStore {
  full = false;
  override async put(key: string, value: unknown): Promise<void> {
    if (this.full) throw Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
    return super.put(key, value);
  }
  override async delete(key: string): Promise<boolean> {
    if (this.full) throw Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
    return super.delete(key);
  }
}

t.test('a failed write changes nothing in memory: allocate, release, pools', async (t) => {
  const store = new FullDiskStore();
  const ipam = await Ipam.open(store);
  await ipam.ensurePool('p', v4);
  const a = await ipam.allocate('p', ep('a'));
  store.full = true;
  await t.rejects(ipam.allocate('p', ep('b')), /ENOSPC/);
  await t.rejects(ipam.allocate('p', ep('c'), { ip: '10.9.0.99' }), /ENOSPC/);
  await t.rejects(ipam.reserveExternal('172.16.0.1', ep('d')), /ENOSPC/);
  await t.rejects(ipam.releaseOwner(ep('a')), /ENOSPC/);
  await t.rejects(ipam.ensurePool('q', [{ cidr: '10.7.0.0/24', gateway: '10.7.0.1' }]), /ENOSPC/);
  t.same(
    ipam.allocations().map((x) => x.ip),
    [a.ip],
    'only the durable allocation',
  );
  t.notOk(ipam.has('q'), 'no pool that is not on disk');
  store.full = false;
  t.equal((await ipam.allocate('p', ep('b'))).ip, '10.9.0.3', 'the cursor moved back too: the next address is the one after a');
  const reopened = await Ipam.open(store);
  t.same(
    reopened
      .allocations()
      .map((x) => x.ip)
      .sort(),
    [a.ip, '10.9.0.3'],
    'memory and disk agree',
  );
});

t.test('external reservations: unique, persisted, released with their owner', async (t) => {
  const store = new MemoryStore();
  const ipam = await Ipam.open(store);
  await ipam.ensurePool('p', v4);
  await ipam.reserveExternal('172.16.0.1', ep('a'));
  await ipam.reserveExternal('172.16.0.1', ep('a'));
  await t.rejects(ipam.reserveExternal('172.16.0.1', ep('b')), { code: 'address_in_use' });
  await t.rejects(ipam.reserveExternal('10.9.0.5', ep('b')), { code: 'bad_request', message: /lies in pool "p"/ });
  const reopened = await Ipam.open(store);
  t.same(reopened.externalOwnerOf('172.16.0.1'), ep('a'));
  t.same(reopened.allocations(), [{ pool: null, ip: '172.16.0.1', owner: ep('a') }]);
  t.equal(await reopened.releaseOwner(ep('a')), 1);
  t.same((await Ipam.open(store)).allocations(), []);
});
