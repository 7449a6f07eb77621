import t from 'tap';
import { attachmentId, hostVethName, ipamOwner, withDockerRef } from '../src/endpoint/naming.ts';
import type { Endpoint } from '../src/types.ts';
import { ownerKey, parseOwnerKey } from '../src/ipam/owner.ts';
import { KeyedLock } from '../src/endpoint/lock.ts';

t.test('host veth names are stable, distinct and fit IFNAMSIZ', async (t) => {
  const a = hostVethName('c1', 'eth0');
  t.equal(a, hostVethName('c1', 'eth0'));
  t.not(a, hostVethName('c1', 'eth1'));
  t.ok(a.length <= 15);
  t.match(a, /^mbr[0-9a-f]{11}$/);
});

t.test('IPAM owners round-trip, even with slashes in container ids', async (t) => {
  t.same(parseOwnerKey(ownerKey(ipamOwner('ns/pod', 'eth0'))), { kind: 'endpoint', attachment: 'ns/pod', ifName: 'eth0' });
  t.equal(ownerKey(ipamOwner('c1', 'eth0')), 'ep:c1/eth0', 'the stored form of earlier versions');
  t.same(parseOwnerKey('docker-ipam:docker-0123456789ab:1a2b3c4d'), {
    kind: 'docker-address',
    network: 'docker-0123456789ab',
    lease: '1a2b3c4d',
  });
  t.same(parseOwnerKey('docker-aux:docker-0123456789ab'), { kind: 'docker-aux', network: 'docker-0123456789ab' });
  t.equal(parseOwnerKey('docker:pool:10.0.0.1'), null, 'a key this version never writes');
});

t.test('KeyedLock serialises one key and lets others run', async (t) => {
  const lock = new KeyedLock();
  const order: string[] = [];
  const slow = (tag: string, ms: number) => async () => {
    order.push(`${tag}+`);
    await new Promise((r) => setTimeout(r, ms));
    order.push(`${tag}-`);
  };
  await Promise.all([lock.run('k', slow('a', 20)), lock.run('k', slow('b', 1)), lock.run('other', slow('c', 1))]);
  t.ok(order.indexOf('a-') < order.indexOf('b+'), 'same key runs one after the other');
  t.ok(order.indexOf('c+') < order.indexOf('a-'), 'another key does not wait');
  await t.rejects(
    lock.run('k', async () => {
      throw new Error('boom');
    }),
    /boom/,
  );
  t.equal(await lock.run('k', async () => 7), 7, 'a failure does not wedge the key');
});

t.test('a Docker endpoint is named by its Docker endpoint id; older stored ones are read the new way', async (t) => {
  t.equal(attachmentId({ containerId: 'c1' }), 'c1');
  t.equal(attachmentId({ containerId: '', docker: { endpointId: 'e1' } }), 'e1');
  const eid = 'e'.repeat(64),
    nid = 'n'.repeat(64),
    cid = 'c'.repeat(64);
  const old = {
    containerId: eid,
    ifName: 'mbdeeeeeeeeeee',
    metadata: { 'docker:endpoint-id': eid, 'docker:network-id': nid, 'docker:plugin': 'membrane' },
    labels: { 'docker:container-id': cid, 'docker:container-name': 'web' },
  } as unknown as Endpoint;
  const now = withDockerRef(old);
  t.same(
    [now.containerId, now.docker],
    [cid, { endpointId: eid, networkId: nid, containerName: 'web' }],
    'the container id, the Docker ids alongside',
  );
  t.equal(attachmentId(now), attachmentId(old), 'same name: same host veth, store key and IPAM owner as before');
  const cni = { containerId: 'abc', ifName: 'eth0', metadata: {}, labels: {} } as unknown as Endpoint;
  t.equal(withDockerRef(cni), cni, 'CNI endpoints are left alone');
});
