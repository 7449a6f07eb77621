// NetworkDriver protocol against a fake core: the wire shapes of docker-plugin-trace.txt, the mapping onto
// core networks/endpoints, option validation, errors dockerd can show, and state across a restart.
import t from 'tap';
import fs from 'node:fs';
import { harness, hex64, createNetworkBody, createEndpointBody, joinBody } from './helpers.ts';
import { tempIfName, v6HalfRoutes } from '../src/network-driver.ts';

t.test('handshake: Activate, capabilities, address spaces; empty bodies; unknown calls 404', async (t) => {
  const h = await harness();
  t.teardown(() => h.close());
  const act = await h.call('/Plugin.Activate');
  t.equal(act.status, 200);
  t.same(act.body, { Implements: ['NetworkDriver', 'IpamDriver'] });
  t.equal(act.contentType, 'application/vnd.docker.plugins.v1.1+json');
  t.same((await h.call('/NetworkDriver.GetCapabilities')).body, { Scope: 'local', ConnectivityScope: 'local' });
  t.same((await h.call('/IpamDriver.GetCapabilities')).body, { RequiresMACAddress: false, RequiresRequestReplay: false });
  t.same((await h.call('/IpamDriver.GetDefaultAddressSpaces')).body, {
    LocalDefaultAddressSpace: `${h.name}-local`,
    GlobalDefaultAddressSpace: `${h.name}-global`,
  });
  const unknown = await h.call('/NetworkDriver.GwAllocCheck', {});
  t.equal(unknown.status, 404);
  t.match(unknown.body.Err, /unsupported plugin call POST \/NetworkDriver.GwAllocCheck/);
  t.equal((await h.call('/Plugin.Activate', 'null')).status, 200, 'a "null" body is an empty body');
  t.same(
    (await h.call('/NetworkDriver.DiscoverNew', { DiscoveryType: 1, DiscoveryData: { Address: '192.0.2.1', Self: true } })).body,
    {},
  );
  t.same((await h.call('/NetworkDriver.AllocateNetwork', { NetworkID: hex64(), Options: { a: 'b' } })).body, {
    Options: { a: 'b' },
  });
  t.same((await h.call('/NetworkDriver.FreeNetwork', { NetworkID: hex64() })).body, {});
  t.equal(fs.statSync(h.plugin.socketPath).mode & 0o777, 0o660, 'socket mode 0660');
});

t.test('an oversized body is 413 with an Err naming the call and the limit', async (t) => {
  const h = await harness();
  t.teardown(() => h.close());
  const r = await h.call('/NetworkDriver.CreateEndpoint', JSON.stringify({ NetworkID: 'x', pad: 'p'.repeat(1_100_000) }));
  t.equal(r.status, 413);
  t.match(r.body.Err, /NetworkDriver.CreateEndpoint request body is larger than the plugin accepts \(1mb\)/);
  t.equal((await h.call('/Plugin.Activate')).status, 200, 'and the plugin goes on');
});

t.test('malformed requests are refused with a message naming the field', async (t) => {
  const h = await harness();
  t.teardown(() => h.close());
  const r1 = await h.call('/NetworkDriver.CreateNetwork', '{not json');
  t.equal(r1.status, 500);
  t.match(r1.body.Err, /invalid NetworkDriver.CreateNetwork request: body is not valid JSON/);
  const r2 = await h.call('/NetworkDriver.CreateNetwork', { NetworkID: 'abc', IPv4Data: [] });
  t.match(r2.body.Err, /NetworkID: expected a 64-hex Docker id/);
  const r3 = await h.call('/IpamDriver.RequestAddress', { Address: '' });
  t.equal(r3.status, 500);
  t.match(r3.body.Err, /PoolID/);
  t.equal(r3.body.Error, r3.body.Err, 'IPAM errors carry Error too');
});

t.test('CreateNetwork maps onto a core network; endpoint lifecycle as in the trace', async (t) => {
  const h = await harness();
  t.teardown(() => h.close());
  const nid = hex64(),
    eid = hex64();
  const cn = await h.call('/NetworkDriver.CreateNetwork', createNetworkBody(nid, { pool: '10.98.0.0/24', gateway: '10.98.0.1' }));
  t.equal(cn.status, 200, JSON.stringify(cn.body));
  t.same(cn.body, {});
  const net = h.core.networks.get(`docker-${nid.slice(0, 12)}`);
  t.ok(net, 'core network docker-<12 hex>');
  t.same(net!.subnets, [{ cidr: '10.98.0.0/24', gateway: '10.98.0.1', family: 4 }]);
  t.equal(net!.mtu, 1500);
  t.same(
    (await h.call('/NetworkDriver.CreateNetwork', createNetworkBody(nid, { pool: '10.98.0.0/24', gateway: '10.98.0.1' }))).body,
    {},
    'a retried CreateNetwork succeeds',
  );

  const ce = await h.call('/NetworkDriver.CreateEndpoint', createEndpointBody(nid, eid, '10.98.0.2/24'));
  t.equal(ce.status, 200, JSON.stringify(ce.body));
  const ep = h.core.endpoints.get(eid, tempIfName(eid))!;
  t.ok(ep, 'core endpoint keyed by EndpointID and the temp name');
  t.equal(ep.netns, null, 'created in the host netns for dockerd to move');
  t.ok(ep.ifName.length <= 15 && ep.ifName.startsWith('mbd'));
  t.same(
    ep.ips.map((i) => i.address),
    ['10.98.0.2/32'],
  );
  t.same(ce.body, { Interface: { MacAddress: ep.mac } }, 'only the MAC dockerd left empty is filled in');
  const createReq = h.core.calls.find((c) => c.op === 'endpoints.create')!.args[0] as Record<string, unknown>;
  t.equal(createReq.externalIpam, true);
  t.equal(createReq.netns, undefined);

  const j = await h.call('/NetworkDriver.Join', joinBody(nid, eid));
  t.equal(j.status, 200, JSON.stringify(j.body));
  t.same(j.body, { InterfaceName: { SrcName: ep.ifName, DstPrefix: 'eth' }, Gateway: '10.98.0.1' });
  t.same((await h.call('/NetworkDriver.ProgramExternalConnectivity', { NetworkID: nid, EndpointID: eid, Options: {} })).body, {});
  const info = await h.call('/NetworkDriver.EndpointOperInfo', { NetworkID: nid, EndpointID: eid });
  t.equal(info.body.Value['membrane.host-interface'], ep.hostIfName);
  t.same((await h.call('/NetworkDriver.RevokeExternalConnectivity', { NetworkID: nid, EndpointID: eid })).body, {});
  t.same((await h.call('/NetworkDriver.Leave', { NetworkID: nid, EndpointID: eid })).body, {});
  t.same((await h.call('/NetworkDriver.DeleteEndpoint', { NetworkID: nid, EndpointID: eid })).body, {});
  t.notOk(h.core.endpoints.get(eid, tempIfName(eid)), 'core endpoint deleted');
  t.same(
    (await h.call('/NetworkDriver.DeleteEndpoint', { NetworkID: nid, EndpointID: eid })).body,
    {},
    'DeleteEndpoint is idempotent',
  );
  t.same(
    (await h.call('/NetworkDriver.EndpointOperInfo', { NetworkID: nid, EndpointID: eid })).body,
    { Value: {} },
    'unknown endpoint: empty info',
  );
  t.same((await h.call('/NetworkDriver.DeleteNetwork', { NetworkID: nid })).body, {});
  t.notOk(h.core.networks.get(`docker-${nid.slice(0, 12)}`), 'core network deleted');
  t.same((await h.call('/NetworkDriver.DeleteNetwork', { NetworkID: nid })).body, {}, 'DeleteNetwork tolerates unknown ids');
});

t.test('a MAC chosen by docker is used and not echoed; IPv6 gets its gateway and half-subnet routes', async (t) => {
  const h = await harness();
  t.teardown(() => h.close());
  const nid = hex64(),
    eid = hex64();
  await h.call(
    '/NetworkDriver.CreateNetwork',
    createNetworkBody(
      nid,
      { pool: '10.97.0.0/24', gateway: '10.97.0.1' },
      { v6: { pool: 'fd00:97::/64', gateway: 'fd00:97::1' } },
    ),
  );
  const ce = await h.call(
    '/NetworkDriver.CreateEndpoint',
    createEndpointBody(nid, eid, '10.97.0.5/24', 'fd00:97::5/64', '02:42:0a:61:00:05'),
  );
  t.same(ce.body, { Interface: {} });
  const ep = h.core.endpoints.get(eid, tempIfName(eid))!;
  t.equal(ep.mac, '02:42:0a:61:00:05');
  t.same(
    ep.ips.map((i) => i.address),
    ['10.97.0.5/32', 'fd00:97::5/128'],
  );
  const j = await h.call('/NetworkDriver.Join', joinBody(nid, eid));
  t.same(j.body, {
    InterfaceName: { SrcName: ep.ifName, DstPrefix: 'eth' },
    Gateway: '10.97.0.1',
    GatewayIPv6: 'fd00:97::1',
    StaticRoutes: [
      { Destination: 'fd00:97::1/128', RouteType: 1 },
      { Destination: 'fd00:97::/65', RouteType: 0, NextHop: 'fd00:97::1' },
      { Destination: 'fd00:97:0:0:8000::/65', RouteType: 0, NextHop: 'fd00:97::1' },
    ],
  });
  t.same(v6HalfRoutes('fd00::/127', 'fd00::1'), [], 'no halves for tiny subnets');
});

t.test('options: membrane.mtu, unknown membrane.* options, foreign options, bad subnets', async (t) => {
  const h = await harness();
  t.teardown(() => h.close());
  const ok = hex64();
  const r = await h.call(
    '/NetworkDriver.CreateNetwork',
    createNetworkBody(ok, { pool: '10.96.1.0/24', gateway: '10.96.1.1' }, { generic: { 'membrane.mtu': '1400', foo: 'bar' } }),
  );
  t.equal(r.status, 200, JSON.stringify(r.body));
  t.equal(h.core.networks.get(`docker-${ok.slice(0, 12)}`)!.mtu, 1400);

  const bad = async (body: unknown, re: RegExp, what: string) => {
    const res = await h.call('/NetworkDriver.CreateNetwork', body);
    t.equal(res.status, 500, what);
    t.match(res.body.Err, re, what);
    t.match(res.body.Err, new RegExp(`^${h.name}: `), 'the message names the plugin');
  };
  await bad(
    createNetworkBody(hex64(), { pool: '10.96.2.0/24', gateway: '10.96.2.1' }, { generic: { 'membrane.mtux': '1400' } }),
    /unknown option -o membrane.mtux; membrane networks accept: membrane.mtu/,
    'unknown membrane option',
  );
  await bad(
    createNetworkBody(hex64(), { pool: '10.96.2.0/24', gateway: '10.96.2.1' }, { generic: { 'membrane.mtu': 'big' } }),
    /-o membrane.mtu=big is not a valid MTU/,
    'bad mtu',
  );
  await bad(
    createNetworkBody(
      hex64(),
      { pool: '10.96.2.0/24', gateway: '10.96.2.1' },
      { v6: { pool: 'fd00:96::/64', gateway: 'fd00:96::1' }, generic: { 'membrane.mtu': '1000' } },
    ),
    /IPv6 needs 1280/,
    'mtu too small for IPv6',
  );
  await bad(
    createNetworkBody(hex64(), { pool: '10.96.1.128/25', gateway: '10.96.1.129' }),
    /subnet 10.96.1.128\/25 overlaps subnet 10.96.1.0\/24 of Docker network [0-9a-f]{12} \(membrane network docker-/,
    'overlap',
  );
  await bad(createNetworkBody(hex64(), { pool: '10.96.300.0/24', gateway: '10.96.3.1' }), /is not a CIDR/, 'invalid CIDR');
  await bad(
    createNetworkBody(hex64(), { pool: '10.96.4.5/24', gateway: '10.96.4.1' }),
    /has host bits set \(did you mean 10.96.4.0\/24\?\)/,
    'host bits',
  );
  await bad(
    createNetworkBody(hex64(), { pool: '10.96.5.0/24', gateway: '10.96.6.1' }),
    /gateway 10.96.6.1 is outside subnet 10.96.5.0\/24/,
    'gateway outside',
  );
  const two = createNetworkBody(hex64(), { pool: '10.96.7.0/24', gateway: '10.96.7.1' });
  two.IPv4Data.push({ AddressSpace: 'LocalDefault', Gateway: '10.96.8.1/24', Pool: '10.96.8.0/24' });
  await bad(two, /at most one IPv4 and one IPv6 subnet/, 'two IPv4 subnets');
  t.equal(h.core.networks.list().length, 1, 'no refused network left anything in the core');
});

t.test('errors on endpoints name the Docker objects; a failed create leaves no state', async (t) => {
  const h = await harness();
  t.teardown(() => h.close());
  const nid = hex64(),
    eid = hex64();
  const ce = await h.call('/NetworkDriver.CreateEndpoint', createEndpointBody(nid, eid, '10.95.0.2/24'));
  t.equal(ce.status, 500);
  t.match(ce.body.Err, /Docker network [0-9a-f]{12} is unknown to the membrane plugin/);
  await h.call('/NetworkDriver.CreateNetwork', createNetworkBody(nid, { pool: '10.95.0.0/24', gateway: '10.95.0.1' }));
  h.core.failNextCreate = Object.assign(new Error('veth mbd123 exists'), { code: 'endpoint_exists' });
  const failed = await h.call('/NetworkDriver.CreateEndpoint', createEndpointBody(nid, eid, '10.95.0.2/24'));
  t.match(
    failed.body.Err,
    new RegExp(`cannot create endpoint ${eid.slice(0, 12)} on Docker network ${nid.slice(0, 12)}: veth mbd123 exists`),
  );
  const j = await h.call('/NetworkDriver.Join', joinBody(nid, eid));
  t.equal(j.status, 500);
  t.match(j.body.Err, /the endpoint does not exist/);
  t.same(
    (await h.call('/NetworkDriver.DeleteEndpoint', { NetworkID: nid, EndpointID: eid })).body,
    {},
    'rollback DeleteEndpoint succeeds',
  );
  const none = await h.call('/NetworkDriver.CreateEndpoint', createEndpointBody(nid, hex64(), ''));
  t.match(none.body.Err, /dockerd sent no address/);
});

t.test('state survives a plugin restart (dockerd does not replay CreateNetwork)', async (t) => {
  const h = await harness();
  t.teardown(() => h.close());
  const nid = hex64(),
    e1 = hex64(),
    e2 = hex64();
  await h.call(
    '/NetworkDriver.CreateNetwork',
    createNetworkBody(nid, { pool: '10.94.0.0/24', gateway: '10.94.0.1' }, { generic: { 'membrane.mtu': '1450' } }),
  );
  await h.call('/NetworkDriver.CreateEndpoint', createEndpointBody(nid, e1, '10.94.0.2/24'));
  await h.restart();
  const j = await h.call('/NetworkDriver.Join', joinBody(nid, e1));
  t.equal(j.status, 200, 'Join after restart finds the endpoint');
  t.equal(j.body.Gateway, '10.94.0.1');
  const ce = await h.call('/NetworkDriver.CreateEndpoint', createEndpointBody(nid, e2, '10.94.0.3/24'));
  t.equal(ce.status, 200, 'CreateEndpoint after restart finds the network');
  await h.restart(); // close() flushes the endpoint writes, which are not awaited by the handlers
  const dir = `${h.stateDir}/docker/${h.name}/endpoints`;
  const files = fs.readdirSync(dir);
  t.equal(files.filter((f) => f.endsWith('.json')).length, 2, 'one document per endpoint');
  t.equal(files.filter((f) => f.endsWith('.tmp')).length, 0, 'no temp files left');
  // A record lost in a crash (written after answering dockerd) is rebuilt from the core endpoint.
  fs.rmSync(`${dir}/${e2}.json`);
  await h.restart();
  const j2 = await h.call('/NetworkDriver.Join', joinBody(nid, e2));
  t.equal(j2.status, 200, 'Join finds an endpoint whose record was lost');
  t.equal(j2.body.InterfaceName.SrcName, tempIfName(e2));
  // DeleteNetwork with endpoints dockerd never deleted (it crashed): they go with the network.
  t.same((await h.call('/NetworkDriver.DeleteNetwork', { NetworkID: nid })).body, {});
  t.equal(h.core.endpoints.list().length, 0);
  t.equal(h.core.networks.list().length, 0);
});

t.test('concurrent creates on one network get distinct endpoints and all persist', async (t) => {
  const h = await harness();
  t.teardown(() => h.close());
  const nid = hex64();
  await h.call('/NetworkDriver.CreateNetwork', createNetworkBody(nid, { pool: '10.93.0.0/24', gateway: '10.93.0.1' }));
  const ids = Array.from({ length: 20 }, () => hex64());
  const replies = await Promise.all(
    ids.map((e, i) => h.call('/NetworkDriver.CreateEndpoint', createEndpointBody(nid, e, `10.93.0.${i + 2}/24`))),
  );
  t.ok(replies.every((r) => r.status === 200));
  await Promise.all(ids.map((e) => h.call('/NetworkDriver.Join', joinBody(nid, e))));
  await h.restart();
  for (const e of ids)
    t.equal(
      (await h.call('/NetworkDriver.EndpointOperInfo', { NetworkID: nid, EndpointID: e })).body.Value['membrane.network'],
      `docker-${nid.slice(0, 12)}`,
    );
});
