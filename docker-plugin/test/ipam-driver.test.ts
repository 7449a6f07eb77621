// IpamDriver protocol against a fake core: the `--ipam-driver membrane` sequence of the trace (pool and
// gateway before CreateNetwork, addresses after), --ip, --ip-range, --aux-address, release, overlaps.
import t from 'tap';
import { harness, hex64, createNetworkBody, createEndpointBody, joinBody, type Harness } from './helpers.ts';

async function createWithIpam(
  h: Harness,
  nid: string,
  pool: string,
  extra: { subPool?: string; gateway?: string; aux?: string[]; v6?: string } = {},
) {
  const space = `${h.name}-local`;
  const rp = await h.call('/IpamDriver.RequestPool', {
    AddressSpace: space,
    Pool: pool,
    SubPool: extra.subPool ?? '',
    Options: {},
    V6: false,
  });
  if (rp.status !== 200) return { rp };
  const gw = await h.call('/IpamDriver.RequestAddress', {
    PoolID: rp.body.PoolID,
    Address: extra.gateway ?? '',
    Options: { RequestAddressType: 'com.docker.network.gateway' },
  });
  for (const a of extra.aux ?? [])
    await h.call('/IpamDriver.RequestAddress', { PoolID: rp.body.PoolID, Address: a, Options: null });
  let rp6, gw6;
  if (extra.v6) {
    rp6 = await h.call('/IpamDriver.RequestPool', { AddressSpace: space, Pool: extra.v6, SubPool: '', Options: {}, V6: true });
    gw6 = await h.call('/IpamDriver.RequestAddress', {
      PoolID: rp6.body.PoolID,
      Address: '',
      Options: { RequestAddressType: 'com.docker.network.gateway' },
    });
  }
  const gwIp = gw.body.Address.split('/')[0];
  const body = createNetworkBody(
    nid,
    { pool, gateway: gwIp, space },
    extra.v6 ? { v6: { pool: extra.v6, gateway: gw6!.body.Address.split('/')[0], space } } : {},
  );
  const cn = await h.call('/NetworkDriver.CreateNetwork', body);
  return { rp, gw, rp6, gw6, cn };
}

t.test('the --ipam-driver sequence: pool, gateway, network, addresses, release, network rm', async (t) => {
  const h = await harness();
  t.teardown(() => h.close());
  const nid = hex64();
  const { rp, gw, cn } = await createWithIpam(h, nid, '10.96.0.0/24', { aux: ['10.96.0.2'] });
  t.same(rp.body, { PoolID: `${h.name}-local/10.96.0.0/24`, Pool: '10.96.0.0/24', Data: {} });
  t.same(gw!.body, { Address: '10.96.0.1/24', Data: {} }, 'gateway = first usable address, with the pool prefix');
  t.equal(cn!.status, 200, JSON.stringify(cn!.body));
  const coreName = `docker-${nid.slice(0, 12)}`;
  const pool = () => h.core.ipam.pools().find((p) => p.name === coreName)!;
  t.same(
    pool().allocations.map((a) => [a.ip, a.owner]),
    [['10.96.0.2', `docker-aux:${coreName}`]],
    'aux address reserved in the core',
  );

  const a1 = await h.call('/IpamDriver.RequestAddress', { PoolID: rp.body.PoolID, Address: '', Options: null });
  t.equal(a1.status, 200, JSON.stringify(a1.body));
  t.same(a1.body, { Address: '10.96.0.3/24', Data: {} }, 'next free address (gateway and aux skipped)');
  const a2 = await h.call('/IpamDriver.RequestAddress', { PoolID: rp.body.PoolID, Address: '10.96.0.50', Options: null });
  t.same(a2.body, { Address: '10.96.0.50/24', Data: {} }, '--ip');
  const dup = await h.call('/IpamDriver.RequestAddress', { PoolID: rp.body.PoolID, Address: '10.96.0.50', Options: null });
  t.equal(dup.status, 500);
  t.match(
    dup.body.Err,
    /cannot allocate an address in subnet 10.96.0.0\/24 of Docker network [0-9a-f]{12}: address 10.96.0.50 is already in use on this network \(pick another --ip\)/,
  );
  t.equal(dup.body.Error, dup.body.Err);
  const out = await h.call('/IpamDriver.RequestAddress', { PoolID: rp.body.PoolID, Address: '10.97.0.9', Options: null });
  t.match(out.body.Err, /address 10.97.0.9 is outside subnet 10.96.0.0\/24/);
  const a3 = await h.call('/IpamDriver.RequestAddress', { PoolID: rp.body.PoolID, Address: '', Options: {} });
  t.not(a3.body.Address, a1.body.Address, 'every request gets its own address');

  const eid = hex64();
  t.equal((await h.call('/NetworkDriver.CreateEndpoint', createEndpointBody(nid, eid, a2.body.Address))).status, 200);
  t.equal((await h.call('/NetworkDriver.Join', joinBody(nid, eid))).body.Gateway, '10.96.0.1');
  await h.call('/NetworkDriver.DeleteEndpoint', { NetworkID: nid, EndpointID: eid });
  t.ok(
    pool().allocations.some((a) => a.ip === '10.96.0.50'),
    'DeleteEndpoint does not release: ReleaseAddress does',
  );
  for (const a of [a1, a2, a3]) {
    t.same(
      (await h.call('/IpamDriver.ReleaseAddress', { PoolID: rp.body.PoolID, Address: a.body.Address.split('/')[0] })).body,
      {},
    );
  }
  t.same(
    (await h.call('/IpamDriver.ReleaseAddress', { PoolID: rp.body.PoolID, Address: '10.96.0.50' })).body,
    {},
    'release is idempotent',
  );
  // docker network rm: gateway + aux release, ReleasePool, DeleteNetwork.
  await h.call('/IpamDriver.ReleaseAddress', { PoolID: rp.body.PoolID, Address: '10.96.0.1' });
  await h.call('/IpamDriver.ReleaseAddress', { PoolID: rp.body.PoolID, Address: '10.96.0.2' });
  t.same((await h.call('/IpamDriver.ReleasePool', { PoolID: rp.body.PoolID })).body, {});
  t.same((await h.call('/NetworkDriver.DeleteNetwork', { NetworkID: nid })).body, {});
  t.notOk(h.core.networks.get(coreName));
  t.same(h.core.ipam.pools(), [], 'no pool and no allocation left');
  t.same((await h.call('/IpamDriver.ReleasePool', { PoolID: rp.body.PoolID })).body, {}, 'ReleasePool is idempotent');
});

t.test('--gateway, --ip-range, dual stack, and state across a restart', async (t) => {
  const h = await harness();
  t.teardown(() => h.close());
  const nid = hex64();
  const { rp, gw, rp6, gw6, cn } = await createWithIpam(h, nid, '10.91.0.0/24', {
    subPool: '10.91.0.128/25',
    gateway: '10.91.0.254',
    v6: 'fd00:91::/64',
  });
  t.equal(cn!.status, 200, JSON.stringify(cn!.body));
  t.same(gw!.body.Address, '10.91.0.254/24');
  t.same(gw6!.body.Address, 'fd00:91::1/64');
  const net = h.core.networks.get(`docker-${nid.slice(0, 12)}`)!;
  t.same(
    net.subnets.map((s) => s.gateway),
    ['10.91.0.254', 'fd00:91::1'],
  );
  await h.restart();
  const a = await h.call('/IpamDriver.RequestAddress', { PoolID: rp.body.PoolID, Address: '', Options: null });
  t.equal(a.body.Address, '10.91.0.128/24', 'first address of --ip-range, after a restart');
  const b = await h.call('/IpamDriver.RequestAddress', { PoolID: rp.body.PoolID, Address: '', Options: null });
  t.equal(b.body.Address, '10.91.0.129/24');
  const v6 = await h.call('/IpamDriver.RequestAddress', { PoolID: rp6!.body.PoolID, Address: '', Options: null });
  t.equal(v6.body.Address, 'fd00:91::2/64');
});

t.test('RequestPool refuses what a docker user would get wrong, in their words', async (t) => {
  const h = await harness();
  t.teardown(() => h.close());
  const req = (b: Record<string, unknown>) =>
    h.call('/IpamDriver.RequestPool', { AddressSpace: `${h.name}-local`, Pool: '', SubPool: '', Options: {}, V6: false, ...b });
  const cases: [Record<string, unknown>, RegExp][] = [
    [{}, /membrane IPAM needs an explicit IPv4 subnet: add --subnet CIDR/],
    [{ V6: true }, /needs an explicit IPv6 subnet/],
    [{ SubPool: '10.1.0.0/25' }, /--ip-range 10.1.0.0\/25 needs a --subnet/],
    [{ Pool: '10.1.0.0/33' }, /invalid subnet: .*prefix length \/33 is longer than 32 bits/],
    [{ Pool: 'banana' }, /invalid subnet: "banana" is not a CIDR/],
    [{ Pool: '10.1.0.0/24', V6: true }, /not an IPv6 subnet/],
    [{ Pool: '10.1.0.0/31' }, /too small/],
    [{ Pool: '10.1.0.0/24', SubPool: '10.2.0.0/25' }, /--ip-range 10.2.0.0\/25 is not inside --subnet 10.1.0.0\/24/],
    [{ Pool: '10.1.0.0/24', Options: { 'membrane.x': '1' } }, /unknown IPAM option --ipam-opt membrane.x/],
    // Found by hardening-fuzz-libnetwork: a 300-character address space made the pool record's
    // file name too long, and the answer was the store's ENAMETOOLONG.
    [{ Pool: '10.1.0.0/24', AddressSpace: 'x'.repeat(300) }, /AddressSpace must be at most 64 characters/],
  ];
  for (const [body, re] of cases) {
    const r = await req(body);
    t.equal(r.status, 500, JSON.stringify(body));
    t.match(r.body.Err, re, JSON.stringify(body));
  }
  const nid = hex64();
  t.equal((await createWithIpam(h, nid, '10.89.0.0/16')).cn!.status, 200);
  const o1 = await req({ Pool: '10.89.4.0/24' });
  t.match(o1.body.Err, new RegExp(`subnet 10.89.4.0/24 overlaps subnet 10.89.0.0/16 of Docker network ${nid.slice(0, 12)}`));
  await h.core.networks.create({ name: 'cni-pods', subnets: ['10.88.0.0/16'] });
  const o2 = await req({ Pool: '10.88.1.0/24' });
  t.match(o2.body.Err, /overlaps subnet 10.88.0.0\/16 of membrane network "cni-pods"/);
  // An interrupted create (pool requested, network never created) does not block a retry.
  t.equal((await req({ Pool: '10.87.0.0/24' })).status, 200);
  t.equal((await req({ Pool: '10.87.0.0/24' })).status, 200);
  const unknown = await h.call('/IpamDriver.RequestAddress', { PoolID: 'nope/10.0.0.0/8', Address: '', Options: null });
  t.match(unknown.body.Err, /address pool nope\/10.0.0.0\/8 is unknown/);
});

t.test('the built-in IPAM path leaves the core pool alone', async (t) => {
  const h = await harness();
  t.teardown(() => h.close());
  const nid = hex64(),
    eid = hex64();
  await h.call('/NetworkDriver.CreateNetwork', createNetworkBody(nid, { pool: '10.86.0.0/24', gateway: '10.86.0.1' }));
  await h.call('/NetworkDriver.CreateEndpoint', createEndpointBody(nid, eid, '10.86.0.2/24'));
  t.same(h.core.ipam.pools()[0].allocations, [], 'docker allocated the address, not the core');
});

t.test('an exhausted pool says what a Docker user can do about it', async (t) => {
  const h = await harness();
  t.teardown(() => h.close());
  const nid = hex64();
  const { rp, cn } = await createWithIpam(h, nid, '10.93.0.0/30');
  t.equal(cn!.status, 200, JSON.stringify(cn!.body));
  const first = await h.call('/IpamDriver.RequestAddress', { PoolID: rp.body.PoolID, Address: '', Options: null });
  t.same(first.body, { Address: '10.93.0.2/30', Data: {} }, 'the one address besides the gateway');
  const full = await h.call('/IpamDriver.RequestAddress', { PoolID: rp.body.PoolID, Address: '', Options: null });
  t.equal(full.status, 500);
  t.match(
    full.body.Err,
    /is exhausted: no free IPv4 address left in 10.93.0.0\/30 \(remove unused containers or create the network with a larger --subnet\)/,
  );
});
