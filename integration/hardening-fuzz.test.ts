// Fuzzers of the agent's front doors, against a real agent in a node netns of ours: the HTTP API
// (endpoint, network, label and policy bodies), membrane-cni (stdin configuration and CNI_* variables,
// the real executable) and the libnetwork driver the agent hosts (dockerd's JSON calls). Every answer
// is the door's own clear error (API: 4xx with {error: {code, message}}; CNI: error JSON with a code of
// the spec's table; libnetwork: Err) or a success; never a crash, a 5xx or a hang; a refused request
// changes nothing; at the end nothing is leaked (lib/leaks.ts). Seeded: FUZZ_SEED repeats a run.
import t from 'tap';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomId, randomSubnet24 } from './lib/agent.ts';
import { startNode } from './lib/node-netns.ts';
import { createNetns, type TestNetns } from './lib/netns.ts';
import { nodeState } from './lib/leaks.ts';
import { fuzzBody, fuzzSeed, mutateDoc, mutateText, randomValue, Rng } from './lib/fuzz-inputs.ts';
import { ensureCniBinary, invokeCni } from '../cni/test/lib/exec.ts';

ensureCniBinary();
const SEED = fuzzSeed();
const ROUNDS = {
  api: Number(process.env.MEMBRANE_FUZZ_API ?? 400),
  cni: Number(process.env.MEMBRANE_FUZZ_CNI ?? 120),
  docker: Number(process.env.MEMBRANE_FUZZ_DOCKER ?? 300),
};
t.comment(`seed ${SEED} (FUZZ_SEED=${SEED} repeats this run)`);

interface Answer {
  status: number;
  body: any;
  text: string;
}

function raw(socketPath: string, method: string, p: string, body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : Buffer.from(body);
    const req = http.request(
      {
        socketPath,
        path: p,
        method,
        timeout: 30_000,
        headers: payload ? { 'Content-Type': 'application/json', 'Content-Length': payload.length } : {},
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown;
          try {
            parsed = JSON.parse(text);
          } catch {
            parsed = undefined;
          }
          resolve({ status: res.statusCode ?? 0, body: parsed, text });
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${p}: no answer in 30 s`)));
    req.on('error', reject);
    req.end(payload);
  });
}

t.test('API, membrane-cni and libnetwork fuzzers: clear errors, no crash, no partial state, nothing leaked', async (t) => {
  const plugin = `mbrfz${randomId(3)}`;
  const pluginDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-fzplug-'));
  t.teardown(() => fs.rmSync(pluginDir, { recursive: true, force: true }));
  const node = await startNode({
    extraArgs: [
      '--docker-plugin',
      plugin,
      '--docker-plugin-dir',
      pluginDir,
      '--docker-socket',
      path.join(pluginDir, 'no-docker.sock'),
    ],
  });
  t.teardown(() => node.cleanup());
  // The agent's own failures (error or fatal lines) since the last look: a refusal must not be one.
  let logAt = fs.statSync(node.agent.logFile).size;
  const newFailures = () => {
    const text = fs.readFileSync(node.agent.logFile, 'utf8');
    const lines = text
      .slice(logAt)
      .split('\n')
      .filter((l) => /"level":(50|60)/.test(l));
    logAt = text.length;
    return lines.map((l) => l.slice(0, 300));
  };
  const pods: TestNetns[] = [createNetns('mbz'), createNetns('mbz')];
  t.teardown(() => {
    for (const n of pods) n.remove();
  });
  const sock = node.agent.socket;
  const api = (m: string, p: string, b?: string) => raw(sock, m, p, b);
  const r = new Rng(SEED);

  // An endpoint that stays: the label route needs one.
  const anchor = await node.agent.client.createEndpoint({
    containerId: `anchor-${randomId()}`,
    netns: pods[0].path,
    ifName: 'eth0',
    labels: { app: 'anchor' },
  });
  const empty = await nodeState(node.agent);
  /** What a refused request must not change (cheap to read after every request). */
  const view = async () =>
    JSON.stringify(
      await Promise.all([
        api('GET', '/v1/endpoints').then((a) =>
          a.body.items.map((e: any) => `${e.containerId}/${e.ifName}/${e.identity}`).sort(),
        ),
        api('GET', '/v1/networks').then((a) => a.body.items.map((n: any) => n.name).sort()),
        api('GET', '/v1/ipam').then((a) => a.text),
        api('GET', '/v1/policy').then((a) => a.body.items.map((p: any) => `${p.name}@${p.revision}`).sort()),
      ]),
    );
  const bad: string[] = [];
  const problem = (what: string, input: string, a: { status?: number; text?: string }) => {
    if (bad.length < 20) bad.push(`${what}: ${a.status} ${String(a.text).slice(0, 300)} <- ${input.slice(0, 300)}`);
  };

  // ---- the HTTP API --------------------------------------------------------------------------------
  const policyYaml = `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: fz\nspec:\n  endpointSelector:\n    matchLabels:\n      app: fz\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: web\n    toPorts:\n    - ports:\n      - port: "80"\n        protocol: TCP\n`;
  const policyJson = {
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name: 'fzj' },
    spec: {
      endpointSelector: { matchLabels: { app: 'fz' } },
      egress: [{ toCIDR: ['198.18.0.0/16'], toPorts: [{ ports: [{ port: '53', protocol: 'UDP' }] }] }],
    },
  };
  const doors = [
    {
      method: 'POST',
      path: '/v1/endpoints',
      valid: () => ({
        containerId: `fz-${randomId()}`,
        ifName: 'eth1',
        netns: pods[1].path,
        labels: { app: 'fz' },
        metadata: { k: 'v' },
      }),
    },
    { method: 'POST', path: '/v1/networks', valid: () => ({ name: `fz${randomId(3)}`, subnets: [randomSubnet24()], mtu: 1400 }) },
    {
      method: 'PUT',
      path: `/v1/endpoints/${anchor.containerId}/eth0/labels`,
      valid: () => ({ labels: { app: 'anchor', tier: 'x' } }),
    },
  ];
  let refused = 0,
    accepted = 0;
  for (let i = 0; i < ROUNDS.api; i++) {
    const before = await view();
    let a: Answer;
    let input: string;
    let door: string;
    if (r.chance(0.2)) {
      door = 'POST /v1/policy';
      input = r.chance(0.5) ? mutateText(r, policyYaml) : JSON.stringify(mutateDoc(r, policyJson));
      a = await api('POST', '/v1/policy', input);
    } else {
      const d = r.pick(doors);
      door = `${d.method} ${d.path}`;
      input = fuzzBody(r, d.valid());
      a = await api(d.method, d.path, input);
    }
    if (a.status >= 200 && a.status < 300) {
      accepted++;
      // A valid mutation: undo it so that the end state can be compared.
      if (door === 'POST /v1/endpoints') await node.agent.client.deleteEndpoint(a.body.containerId, a.body.ifName);
      if (door === 'POST /v1/networks' && a.status === 201) await node.agent.client.deleteNetwork(a.body.name);
      if (door === 'POST /v1/policy') await api('DELETE', '/v1/policy?all=true');
      continue;
    }
    refused++;
    const clear =
      a.status >= 400 &&
      a.status < 500 &&
      typeof a.body?.error?.code === 'string' &&
      typeof a.body.error.message === 'string' &&
      a.body.error.message.length > 0;
    const failures = newFailures();
    if (!clear || failures.length) problem(door, input, { status: a.status, text: `${a.text} ${failures.join(' ')}` });
    else if ((await view()) !== before) problem(`${door} changed state although refused`, input, a);
  }
  await api('PUT', `/v1/endpoints/${anchor.containerId}/eth0/labels`, JSON.stringify({ labels: { app: 'anchor' } }));
  t.same(bad, [], `API: ${refused} refused with a clear 4xx and nothing changed, ${accepted} valid mutations accepted`);
  bad.length = 0;
  t.ok(refused > ROUNDS.api / 2, 'most inputs were refused (the fuzz reaches the checks)');
  t.same((await api('GET', '/v1/healthz')).status, 200, 'the agent is alive');

  // ---- membrane-cni --------------------------------------------------------------------------------
  const VERBS = ['ADD', 'DEL', 'CHECK', 'STATUS', 'GC', 'VERSION'];
  const validConf = {
    cniVersion: '1.0.0',
    name: `fz-${node.agent.id}`,
    type: 'membrane-cni',
    agentSocket: sock,
    labels: { app: 'fzc' },
  };
  // (an environment cannot hold NUL: execve stops there)
  const nastyEnv = () => String(randomValue(r) ?? '').replaceAll('\0', '');
  const added: { containerId: string; ifName: string }[] = [];
  const codes = new Map<number, number>();
  for (let i = 0; i < ROUNDS.cni; i++) {
    let conf: string;
    if (r.chance(0.6)) {
      const m = mutateDoc(r, validConf) as Record<string, unknown>;
      // Where the plugin writes (its queue next to agentSocket, its log) is the operator's, not input: keep ours.
      if (m && typeof m === 'object' && !Array.isArray(m)) {
        m.agentSocket = sock;
        delete m.logFile;
      }
      conf = JSON.stringify(m);
    } else {
      conf = r.chance(0.5) ? JSON.stringify(validConf) : mutateText(r, JSON.stringify(validConf));
    }
    const verb = r.chance(0.85) ? r.pick(['ADD', 'ADD', 'DEL', 'CHECK']) : r.chance(0.5) ? r.pick(VERBS) : nastyEnv();
    // Mostly the configuration is what is damaged (so that inputs reach the agent); sometimes one variable.
    const env = {
      containerId: `fzc-${randomId()}`,
      ifName: 'eth1',
      netns: pods[1].path,
      args: `K8S_POD_NAMESPACE=fz;K8S_POD_NAME=p${i}`,
    };
    if (r.chance(0.35)) env[r.pick(['containerId', 'ifName', 'netns', 'args'] as const)] = nastyEnv();
    const containerId = env.containerId;
    const before = await view();
    const o = await invokeCni(verb, conf, env);
    const input = `${verb} ${JSON.stringify(env)} ${conf}`;
    if (o.code === 0) {
      // Gone again at once (as a pod would be), so that the next ADD finds eth1 free in the pod.
      if (verb === 'ADD') {
        added.push({ containerId, ifName: env.ifName });
        await invokeCni('DEL', validConf, { containerId, ifName: env.ifName, netns: pods[1].path });
      }
      continue;
    }
    const e = o.out;
    codes.set(e?.code, (codes.get(e?.code) ?? 0) + 1);
    const clear =
      o.code === 1 &&
      e &&
      typeof e === 'object' &&
      [1, 2, 3, 4, 5, 6, 7, 11, 50, 102].includes(e.code) &&
      typeof e.msg === 'string' &&
      e.msg.length > 0 &&
      !/\n\s+at /.test(o.stdout);
    const failures = newFailures();
    if (!clear || failures.length)
      problem('membrane-cni', input, { status: o.code ?? -1, text: `${o.stdout} ${o.stderr.slice(-300)} ${failures.join(' ')}` });
    else if (verb === 'ADD' && (await view()) !== before)
      problem('membrane-cni ADD changed state although refused', input, { status: e.code, text: o.stdout });
  }
  t.same(
    bad,
    [],
    `membrane-cni: every failure a CNI error of the spec's table (${[...codes].map(([c, n]) => `${c}: ${n}`).join(', ')}), ${added.length} valid ADDs`,
  );
  bad.length = 0;

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

  t.same(await nodeState(node.agent), empty, 'nothing leaked: endpoints, addresses, links, routes, map entries, records');
  t.equal((await api('GET', '/v1/healthz')).status, 200, 'and the agent is alive');
  t.same(newFailures(), [], 'no internal error in its log');
});
