import t from 'tap';
import { hostVethName, ipamOwner, parseIpamOwner } from '../src/endpoint/naming.ts';
import { KeyedLock } from '../src/endpoint/lock.ts';

t.test('host veth names are stable, distinct and fit IFNAMSIZ', async (t) => {
  const a = hostVethName('c1', 'eth0');
  t.equal(a, hostVethName('c1', 'eth0'));
  t.not(a, hostVethName('c1', 'eth1'));
  t.ok(a.length <= 15);
  t.match(a, /^mbr[0-9a-f]{11}$/);
});

t.test('IPAM owners round-trip, even with slashes in container ids', async (t) => {
  t.same(parseIpamOwner(ipamOwner('ns/pod', 'eth0')), { containerId: 'ns/pod', ifName: 'eth0' });
  t.equal(parseIpamOwner('docker:pool:10.0.0.1'), null);
});

t.test('KeyedLock serialises one key and lets others run', async (t) => {
  const lock = new KeyedLock();
  const order: string[] = [];
  const slow = (tag: string, ms: number) => async () => { order.push(`${tag}+`); await new Promise((r) => setTimeout(r, ms)); order.push(`${tag}-`); };
  await Promise.all([lock.run('k', slow('a', 20)), lock.run('k', slow('b', 1)), lock.run('other', slow('c', 1))]);
  t.ok(order.indexOf('a-') < order.indexOf('b+'), 'same key runs one after the other');
  t.ok(order.indexOf('c+') < order.indexOf('a-'), 'another key does not wait');
  await t.rejects(lock.run('k', async () => { throw new Error('boom'); }), /boom/);
  t.equal(await lock.run('k', async () => 7), 7, 'a failure does not wedge the key');
});
