// Fuzzer of the libnetwork driver the agent hosts (dockerd's JSON calls), against a real agent in a
// node netns of ours (lib/fuzz-node.ts): every refusal is an Err naming the problem; never a crash or
// a hang; a refused call changes nothing; at the end nothing is leaked (lib/leaks.ts). FUZZ_SEED
// repeats a run.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { randomId, randomSubnet24 } from './lib/agent.ts';
import { fuzzBody } from './lib/fuzz-inputs.ts';
import { raw, ROUNDS, startFuzzNode } from './lib/fuzz-node.ts';

// The CI default (FUZZ_SEED=random searches for new failures; see lib/fuzz-inputs.ts).
const SEED = 716502874;

t.test('libnetwork fuzzer: an Err naming the problem, no crash, no partial state, nothing leaked', async (t) => {
  const f = await startFuzzNode(t, SEED);
  const { node, r, view, newFailures, bad, problem, pods, plugin, pluginDir } = f;

  // ---- libnetwork (as dockerd calls the driver the agent hosts) ------------------------------------
  const psock = path.join(pluginDir, `${plugin}.sock`);
  t.ok(fs.existsSync(psock), `the agent hosts the plugin at ${psock}`);
  const dcall = (p: string, body: string) => raw(psock, 'POST', p, body);
  const netId = () => randomId(32);
  const ok = async (p: string, body: unknown) => {
    const a = await dcall(p, JSON.stringify(body));
    if (a.status !== 200 || a.body?.Err) throw new Error(`${p}: ${a.status} ${a.text}`);
    return a.body;
  };
  // A network as dockerd makes one (pool, gateway, network, one endpoint): the fuzz's valid calls use it.
  const subnet = randomSubnet24();
  const base = subnet.split('.').slice(0, 3).join('.');
  const poolA = (await ok('/IpamDriver.RequestPool', { AddressSpace: '', Pool: subnet, Options: {}, V6: false }))
    .PoolID as string;
  const gw = (
    await ok('/IpamDriver.RequestAddress', {
      PoolID: poolA,
      Address: '',
      Options: { RequestAddressType: 'com.docker.network.gateway' },
    })
  ).Address as string;
  const netA = netId(),
    epA = netId();
  const epOptions = { 'com.docker.network.endpoint.exposedports': [], 'com.docker.network.portmap': [] };
  await ok('/NetworkDriver.CreateNetwork', {
    NetworkID: netA,
    Options: { 'com.docker.network.enable_ipv6': false, 'com.docker.network.generic': {} },
    IPv4Data: [{ AddressSpace: `${plugin}-local`, Gateway: gw, Pool: subnet }],
    IPv6Data: [],
  });
  const addrA = (await ok('/IpamDriver.RequestAddress', { PoolID: poolA, Address: '', Options: {} })).Address as string;
  await ok('/NetworkDriver.CreateEndpoint', {
    NetworkID: netA,
    EndpointID: epA,
    Interface: { Address: addrA, AddressIPv6: '', MacAddress: '' },
    Options: epOptions,
  });
  let host = 20;
  const calls: { path: string; valid: () => unknown }[] = [
    {
      path: '/NetworkDriver.CreateNetwork',
      valid: () => ({
        NetworkID: netId(),
        Options: {
          'com.docker.network.enable_ipv6': false,
          'com.docker.network.generic': { 'com.docker.network.bridge.name': 'x' },
        },
        IPv4Data: [{ AddressSpace: 'LocalDefault', Pool: randomSubnet24(), Gateway: '' }],
        IPv6Data: [],
      }),
    },
    {
      path: '/NetworkDriver.CreateEndpoint',
      valid: () => ({
        NetworkID: netA,
        EndpointID: netId(),
        Interface: { Address: `${base}.${(host++ % 200) + 20}/24`, AddressIPv6: '', MacAddress: '' },
        Options: epOptions,
      }),
    },
    {
      path: '/NetworkDriver.Join',
      valid: () => ({ NetworkID: netA, EndpointID: epA, SandboxKey: pods[1].path, Options: epOptions }),
    },
    { path: '/NetworkDriver.Leave', valid: () => ({ NetworkID: netA, EndpointID: netId() }) },
    { path: '/NetworkDriver.DeleteEndpoint', valid: () => ({ NetworkID: netA, EndpointID: netId() }) },
    { path: '/NetworkDriver.DeleteNetwork', valid: () => ({ NetworkID: netId() }) },
    { path: '/NetworkDriver.EndpointOperInfo', valid: () => ({ NetworkID: netA, EndpointID: epA }) },
    { path: '/NetworkDriver.ProgramExternalConnectivity', valid: () => ({ NetworkID: netA, EndpointID: epA, Options: {} }) },
    {
      path: '/IpamDriver.RequestPool',
      valid: () => ({ AddressSpace: '', Pool: randomSubnet24(), SubPool: '', Options: {}, V6: false }),
    },
    { path: '/IpamDriver.RequestAddress', valid: () => ({ PoolID: poolA, Address: '', Options: {} }) },
    { path: '/IpamDriver.ReleaseAddress', valid: () => ({ PoolID: poolA, Address: `${base}.250` }) },
    { path: '/IpamDriver.ReleasePool', valid: () => ({ PoolID: `LocalDefault/${randomSubnet24()}` }) },
  ];
  // The plugin's own records (pools, networks, endpoints) belong to what a refusal must not change.
  const pluginState = path.join(node.agent.stateDir, 'docker', plugin);
  const dview = async () => {
    // (its endpoint records are written after the answer, a cache of the core's endpoints, which view() has)
    const files = fs.existsSync(pluginState)
      ? fs
          .readdirSync(pluginState, { recursive: true, encoding: 'utf8' })
          .filter((f) => !f.startsWith('endpoints') && !f.includes('.tmp-'))
          .sort()
      : [];
    const docs = files.map((f) => {
      try {
        return `${f}=${fs.readFileSync(path.join(pluginState, f), 'utf8')}`;
      } catch {
        return f;
      }
    });
    return (await view()) + docs.join('\n');
  };
  const created = {
    networks: [] as string[],
    endpoints: [] as string[],
    pools: [] as string[],
    addresses: [] as string[],
    joined: 0,
  };
  let dRefused = 0;
  for (let i = 0; i < ROUNDS.docker; i++) {
    const c = r.pick(calls);
    const input = fuzzBody(r, c.valid());
    const before = await dview();
    const a = await dcall(c.path, input);
    if (a.status === 200 && !a.body?.Err) {
      const sent = (() => {
        try {
          return JSON.parse(input);
        } catch {
          return {};
        }
      })();
      if (c.path === '/NetworkDriver.CreateNetwork') created.networks.push(sent.NetworkID);
      if (c.path === '/NetworkDriver.CreateEndpoint') created.endpoints.push(sent.EndpointID);
      if (c.path === '/NetworkDriver.Join') created.joined++;
      if (c.path === '/IpamDriver.RequestPool' && a.body?.PoolID) created.pools.push(a.body.PoolID);
      if (c.path === '/IpamDriver.RequestAddress' && a.body?.Address) created.addresses.push(a.body.Address.split('/')[0]);
      continue;
    }
    dRefused++;
    // libnetwork's convention: an error is any non-200 status with Err; ours are 500 (refusals logged
    // at info), 413 and 404. An internal failure shows as an error line in the agent's log.
    const clear = a.status !== 200 && typeof a.body?.Err === 'string' && a.body.Err.length > 0;
    const failures = newFailures();
    if (!clear || failures.length)
      problem(`libnetwork ${c.path}`, input, { status: a.status, text: `${a.text} ${failures.join(' ')}` });
    else {
      const after = await dview();
      if (after !== before) {
        let k = 0;
        while (before[k] === after[k]) k++;
        problem(
          `libnetwork ${c.path} changed state although refused (${before.slice(k - 80, k + 80)} -> ${after.slice(k - 80, k + 80)})`,
          input,
          a,
        );
      }
    }
  }
  // Undo what valid mutations did, then the network, as dockerd would.
  if (created.joined) await dcall('/NetworkDriver.Leave', JSON.stringify({ NetworkID: netA, EndpointID: epA }));
  for (const id of [...created.endpoints, epA])
    await dcall('/NetworkDriver.DeleteEndpoint', JSON.stringify({ NetworkID: netA, EndpointID: id }));
  for (const ip of [...created.addresses, addrA.split('/')[0]])
    await dcall('/IpamDriver.ReleaseAddress', JSON.stringify({ PoolID: poolA, Address: ip }));
  for (const id of [...created.networks, netA]) await dcall('/NetworkDriver.DeleteNetwork', JSON.stringify({ NetworkID: id }));
  for (const id of [...created.pools, poolA]) await dcall('/IpamDriver.ReleasePool', JSON.stringify({ PoolID: id }));
  t.same(
    bad,
    [],
    `libnetwork: ${dRefused} refused with an Err naming the problem, nothing changed (${ROUNDS.docker - dRefused} valid mutations)`,
  );

  await f.finish(t);
});
