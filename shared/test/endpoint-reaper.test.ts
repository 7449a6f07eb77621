// The reaper of deleted endpoints against a stand-in kernel: the record is durable before the DEL
// answers, a restarted agent resumes it, the interface goes only when it is still the deleted
// endpoint's (not a re-ADD's, not a newer interface at the same index), flows go by endpoint id, and
// the id is handed back only once its flows are gone.
import t from 'tap';
import { Reaper, REAP_PREFIX, type ReaperDeps } from '../src/endpoint/reaper.ts';
import { MemoryStore } from '../src/store/index.ts';
import type { Endpoint } from '../src/types.ts';

function ep(id: number, hostIfIndex: number, hostIfName = `mbr${id}`): Endpoint {
  return { id, containerId: `c${id}`, ifName: 'eth0', hostIfName, hostIfIndex } as Endpoint;
}

function kernel(links: Record<number, string>) {
  const deleted: number[] = [];
  const flushed: number[][] = [];
  let flushFails = false;
  return {
    deleted,
    flushed,
    links,
    failFlush: (v: boolean) => {
      flushFails = v;
    },
    host: {
      linkByIndex: (i: number) => (links[i] ? { index: i, name: links[i] } : null),
      linkDel: (i: string | number) => {
        deleted.push(Number(i));
        delete links[Number(i)];
        return true;
      },
    } as unknown as ReaperDeps['host'],
    datapath: {
      flushConntrackOf: (ids: readonly number[]) => {
        if (flushFails) throw new Error('map gone');
        flushed.push([...ids]);
        return ids.length;
      },
      releaseDetached: () => undefined,
    },
  };
}

t.test('a deleted endpoint is reaped: interface, flows by id, record; then its id is free', async (t) => {
  const store = new MemoryStore();
  const k = kernel({ 10: 'mbr1', 11: 'mbr2' });
  const released: number[] = [];
  const r = new Reaper({ store, host: k.host, datapath: k.datapath, inUse: () => false, released: (id) => released.push(id) });
  await Promise.all([r.record(ep(1, 10)), r.record(ep(2, 11))]);
  t.equal((await store.list(REAP_PREFIX)).length, 2, 'durable records before anything is reaped');
  t.same(k.deleted, [], 'nothing removed yet');
  await r.reapAll();
  t.same(k.deleted.sort(), [10, 11], 'both interfaces removed');
  t.same(k.flushed, [[1, 2]], 'flows flushed by id, one walk for the batch');
  t.same(released.sort(), [1, 2], 'ids handed back');
  t.same(await store.list(REAP_PREFIX), [], 'records gone');
  await r.reapAll();
  t.same(k.flushed.length, 1, 'reaping again does nothing');
});

t.test("a re-ADD's interface and a newer interface at the old index are left alone", async (t) => {
  const store = new MemoryStore();
  const k = kernel({ 10: 'mbr1', 20: 'other' });
  const r = new Reaper({ store, host: k.host, datapath: k.datapath, inUse: (name) => name === 'mbr1', released: () => {} });
  await r.record(ep(1, 10)); // re-ADDed under the same name (a live endpoint uses it)
  await r.record(ep(2, 20)); // its index now belongs to another interface
  await r.record(ep(3, 30)); // already gone (the runtime removed the netns)
  await r.reapAll();
  t.same(k.deleted, [], 'no interface removed');
  t.same(k.flushed, [[1, 2, 3]], 'their flows are flushed all the same');
  t.equal(r.pending(), 0);
});

t.test('an agent killed before reaping resumes at its next start; a failing flush keeps the record', async (t) => {
  const store = new MemoryStore();
  const k = kernel({ 10: 'mbr1' });
  const first = new Reaper({
    store,
    host: k.host,
    datapath: k.datapath,
    inUse: () => false,
    released: () => {},
    delayMs: 60_000,
  });
  await first.record(ep(1, 10));
  first.kick(); // held: the agent dies before the timer fires

  const released: number[] = [];
  const warnings: string[] = [];
  const second = new Reaper({
    store,
    host: k.host,
    datapath: k.datapath,
    inUse: () => false,
    released: (id) => released.push(id),
    log: {
      warn: (_o, msg) => {
        warnings.push(msg);
      },
    },
  });
  t.same(await second.resume(), [1], 'the restarted agent learns the id is still taken');
  k.failFlush(true);
  await second.reapAll();
  t.same(k.deleted, [10], 'the interface is removed');
  t.same(released, [], 'but the id stays taken while its flows may remain');
  t.equal((await store.list(REAP_PREFIX)).length, 1, 'and the record stays');
  t.match(warnings, ['conntrack flush of deleted endpoints failed']);
  k.failFlush(false);
  await second.close();
  t.same(released, [1], 'close reaps what is left');
  t.same(k.deleted, [10], 'the interface was not removed twice');
  t.same(await store.list(REAP_PREFIX), []);
});

t.test('a record that cannot be written leaves nothing queued', async (t) => {
  const store = new MemoryStore();
  store.put = async () => {
    throw new Error('disk full');
  };
  const k = kernel({ 10: 'mbr1' });
  const r = new Reaper({ store, host: k.host, datapath: k.datapath, inUse: () => false, released: () => {} });
  await t.rejects(r.record(ep(1, 10)), /disk full/);
  t.equal(r.pending(), 0);
  await r.reapAll();
  t.same(k.deleted, [], 'the interface of an endpoint that was not deleted stays');
});

t.test('reaping at once (no room for a record) and cancelling a reap', async (t) => {
  const store = new MemoryStore();
  const k = kernel({ 10: 'mbr1', 11: 'mbr2' });
  const released: number[] = [];
  const r = new Reaper({ store, host: k.host, datapath: k.datapath, inUse: () => false, released: (id) => released.push(id) });
  r.reapNow(ep(1, 10));
  t.same([k.deleted, k.flushed, released], [[10], [[1]], [1]], 'interface, flows and id at once');
  await r.record(ep(2, 11));
  await r.cancel(2);
  t.same(await store.list(REAP_PREFIX), [], 'a cancelled reap leaves no record');
  await r.reapAll();
  t.same(k.deleted, [10], 'and removes nothing');
});

t.test('a batch of removals lets requests that arrive meanwhile in between (each one holds the loop)', async (t) => {
  const store = new MemoryStore();
  const k = kernel({ 10: 'mbr1', 11: 'mbr2', 12: 'mbr3' });
  const order: string[] = [];
  const linkDel = k.host.linkDel.bind(k.host);
  k.host.linkDel = (i: string | number) => {
    order.push(`del ${i}`);
    // A request comes in while the kernel tears the first veth down.
    if (order.length === 1) setImmediate(() => order.push('request'));
    return linkDel(i);
  };
  const r = new Reaper({ store, host: k.host, datapath: k.datapath, inUse: () => false, released: () => undefined });
  await Promise.all([r.record(ep(1, 10)), r.record(ep(2, 11)), r.record(ep(3, 12))]);
  await r.reapAll();
  t.same(order, ['del 10', 'request', 'del 11', 'del 12'], 'the request ran after the first removal, not after all three');
  t.same(k.flushed, [[1, 2, 3]], 'still one conntrack walk for the batch');
});
