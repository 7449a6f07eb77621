// When CIDR identities come or go, only the rules whose peers they can change resolve again
// (policy/cidr-moves.ts, record-use.ts movedUse): the rules naming world or a CIDR holding one of
// them. The maps after each such change must equal a full recompute's. Random changes from a fixed
// seed by default (a CI run is reproducible); FUZZ_SEED=n replays n, FUZZ_SEED=random explores.
import t from 'tap';
import { FIRST_CIDR_IDENTITY, identityKind, RESERVED } from '../src/identity/reserved.ts';
import { parseCidr } from '../src/net/index.ts';
import { rulesMovedBy } from '../src/policy/cidr-moves.ts';
import { parsePolicies } from '../src/policy/parse.ts';
import { FqdnState } from '../src/fqdn/state.ts';
import { PolicyEngine } from '../src/policy/engine.ts';
import { MemoryStore } from '../src/store/index.ts';
import { engineWithEndpoints, MemoryPolicyOps, NO_CHANGES, restartChanges, testEndpoint } from './lib/policy.ts';
import { seeded, testSeed } from './lib/seeded.ts';

const seed = testSeed('FUZZ_SEED', 31_415);
const rnd = seeded(seed);

/** "web" from `n` /24s (10.1.<i>.0/24), a /16 with an exception, world on 8443, and host prefixes. */
const wide = (n: number) =>
  JSON.stringify({
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name: 'wide' },
    spec: {
      endpointSelector: { matchLabels: { app: 'web' } },
      ingress: [
        ...Array.from({ length: n }, (_, i) => ({
          fromCIDR: [`10.1.${i}.0/24`],
          toPorts: [{ ports: [{ port: '443', protocol: 'TCP' }] }],
        })),
        { fromCIDRSet: [{ cidr: '10.2.0.0/16', except: ['10.2.9.0/24'] }] },
        { fromEntities: ['world'], toPorts: [{ ports: [{ port: '8443', protocol: 'TCP' }] }] },
        { fromCIDR: ['10.3.0.1/32', '10.3.0.2/32'] },
      ],
    },
  });

t.test('the rules a changed prefix can move: world, and the wide CIDRs holding it', async (t) => {
  const p = parsePolicies(wide(50)).policies[0];
  const places = (cidrs: string[]) =>
    rulesMovedBy(
      p,
      cidrs.map((c) => parseCidr(c)),
    )
      .map(([, j]) => j)
      .sort((a, b) => a - b);
  t.same(places(['10.1.7.9/32']), [7, 51], 'a /32 in one /24: that /24 and world');
  t.same(places(['10.1.7.0/25', '10.2.9.4/32']), [7, 50, 51], 'and one in the /16 (inside its exception too)');
  t.same(places(['10.0.0.0/8']), [51], 'a wider prefix is in none of them: world only');
  t.same(places(['10.3.0.1/32']), [51], 'host prefixes stand for themselves only');
  t.same(places(['fd00::1/128']), [51], 'another family: world only');
  t.same(places([]), [], 'nothing changed: nothing moves');
});

t.test('CIDR identities coming and going next to wide rules: the maps equal a full recompute', async (t) => {
  t.comment(`FUZZ_SEED=${seed}`);
  const ops = new MemoryPolicyOps(100_000, 100_000);
  const { engine, eps, store } = await engineWithEndpoints(ops, ['web', 'db']);
  t.teardown(() => engine.close());
  await engine.importText(wide(40));
  const pick = () => {
    switch (rnd(5)) {
      case 0:
        return `10.1.${rnd(45)}.${rnd(256)}/32`; // inside a /24 (or just past them)
      case 1:
        return `10.2.${rnd(12)}.${rnd(4) * 64}/26`; // inside the /16, maybe inside its exception
      case 2:
        return `10.1.${rnd(40)}.0/24`; // one of the /24s itself
      case 3:
        // in no CIDR rule: world's only; 192.0.2.1 is the node's own address (seeds 11 and 27182
        // draw it: a CIDR identity for it was renumbered by every restart; see the test below)
        return `192.0.2.${rnd(256)}/32`;
      default:
        return `10.0.0.0/${8 + rnd(8)}`; // wider than the rules
    }
  };
  for (let step = 0; step < 30; step++) {
    const cidrs = Array.from({ length: 1 + rnd(3) }, pick);
    await engine.importText(
      JSON.stringify({
        apiVersion: 'cilium.io/v2',
        kind: 'CiliumNetworkPolicy',
        metadata: { name: `other-${rnd(3)}` },
        spec: { endpointSelector: { matchLabels: { app: 'db' } }, egress: [{ toCIDR: cidrs }] },
      }),
    );
    if (rnd(4) === 0) await engine.delete([`other-${rnd(3)}`]).catch(() => undefined);
    t.same(await restartChanges(store, ops, eps), NO_CHANGES, `step ${step} (${cidrs.join(' ')}): as a full recompute`);
  }
});

t.test("a CIDR rule on the node's own address selects nothing (the host does), before and after a restart", async (t) => {
  const ops = new MemoryPolicyOps(100_000, 100_000);
  let hosts = ['192.0.2.1'];
  const { engine, eps, store } = await engineWithEndpoints(ops, ['web', 'db'], undefined, () => hosts);
  t.teardown(() => engine.close());
  const toCidr = (name: string, cidr: string) =>
    JSON.stringify({
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name },
      spec: { endpointSelector: { matchLabels: { app: 'db' } }, egress: [{ toCIDR: [cidr] }] },
    });
  // The host's prefix first, another after it: a number for the host's prefix came before the
  // other's, and the restart (which finds only the other's in the ipcache) gave it a new one.
  await engine.importText(toCidr('to-host', '192.0.2.1/32'));
  await engine.importText(toCidr('to-net', '10.9.0.0/16'));
  await engine.importText(wide(1));
  const cidrPeers = (id: number, dir: string) =>
    ops
      .entriesOf(id)
      .filter((e) => e.direction === dir && e.peer >= FIRST_CIDR_IDENTITY)
      .map((e) => e.peer);
  const [web, db] = eps;
  t.equal(ops.ipcache.get('192.0.2.1/32'), RESERVED.host, "the node's address is the host in the ipcache");
  t.same(
    cidrPeers(db.id, 'egress'),
    [ops.ipcache.get('10.9.0.0/16')],
    "db's egress: the /16's identity, none for the host's /32",
  );
  const worldPeers = cidrPeers(web.id, 'ingress').sort();
  t.same(await restartChanges(store, ops, eps, () => hosts), NO_CHANGES, 'a restart changes nothing');
  t.same(cidrPeers(web.id, 'ingress').sort(), worldPeers, "web's world rule: the same CIDR identities after it");

  // No longer the node's: the /32 is a prefix like any other, and stays one across a restart.
  hosts = ['192.0.2.2'];
  t.ok(await engine.refreshHostAddresses(), 'the host addresses changed');
  const id = ops.ipcache.get('192.0.2.1/32') ?? 0;
  t.ok(id >= FIRST_CIDR_IDENTITY, 'the /32 has a CIDR identity in the ipcache');
  t.ok(cidrPeers(db.id, 'egress').includes(id), "db's egress allows it");
  t.ok(cidrPeers(web.id, 'ingress').includes(id), "web's world rule includes it");
  t.same(await restartChanges(store, ops, eps, () => hosts), NO_CHANGES, 'a restart changes nothing');

  // The node's again: its identity goes from the ipcache and from both rules.
  hosts = ['192.0.2.1'];
  t.ok(await engine.refreshHostAddresses(), 'the host addresses changed back');
  t.equal(ops.ipcache.get('192.0.2.1/32'), RESERVED.host, 'the host in the ipcache again');
  t.notOk(cidrPeers(db.id, 'egress').includes(id), "db's egress: not the host's address");
  t.notOk(cidrPeers(web.id, 'ingress').includes(id), "web's world rule: not the host's address");
  t.same(await restartChanges(store, ops, eps, () => hosts), NO_CHANGES, 'a restart changes nothing');
});

t.test("the same for another node's address (remote-node in cluster mode), as the nodes come and go", async (t) => {
  const ops = new MemoryPolicyOps(100_000, 100_000);
  const { engine, eps, store } = await engineWithEndpoints(ops, ['web', 'db']);
  t.teardown(() => engine.close());
  const node = '198.18.0.7/32';
  await engine.setRemoteEndpoints(new Map([[node, RESERVED['remote-node']]]));
  await engine.importText(
    JSON.stringify({
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'to-node' },
      spec: { endpointSelector: { matchLabels: { app: 'db' } }, egress: [{ toCIDR: [node, '10.9.0.0/16'] }] },
    }),
  );
  const db = eps[1];
  const cidrPeers = () => ops.entriesOf(db.id).filter((e) => e.direction === 'egress' && e.peer >= FIRST_CIDR_IDENTITY);
  t.equal(ops.ipcache.get(node), RESERVED['remote-node'], 'remote-node in the ipcache');
  t.same(
    cidrPeers().map((e) => e.peer),
    [ops.ipcache.get('10.9.0.0/16')],
    "db's egress: the /16 only, no CIDR identity for the node's address",
  );
  const remote = new Map([[node, RESERVED['remote-node']]]);
  t.same(await restartChanges(store, ops, eps, undefined, remote), NO_CHANGES, 'a restart changes nothing');

  await engine.setRemoteEndpoints(new Map()); // the node left: its address is a prefix like any other
  const id = ops.ipcache.get(node) ?? 0;
  t.ok(id >= FIRST_CIDR_IDENTITY, 'a CIDR identity in the ipcache once the node is gone');
  t.ok(
    cidrPeers().some((e) => e.peer === id),
    "db's egress allows it",
  );
  t.same(await restartChanges(store, ops, eps, undefined, new Map()), NO_CHANGES, 'a restart changes nothing');
});

t.test('a node joining in the remote map the cluster edits in place: its address loses its CIDR identity', async (t) => {
  const ops = new MemoryPolicyOps(100_000, 100_000);
  const { engine, eps, store } = await engineWithEndpoints(ops, ['web', 'db']);
  t.teardown(() => engine.close());
  // cluster/ipcache.ts hands the engine one map and edits it: the engine must not take it as unchanged.
  const remote = new Map([['198.18.0.8/32', RESERVED['remote-node']]]);
  await engine.setRemoteEndpoints(remote);
  const node = '198.18.0.9/32';
  await engine.importText(
    JSON.stringify({
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'to-node' },
      spec: { endpointSelector: { matchLabels: { app: 'db' } }, egress: [{ toCIDR: [node] }] },
    }),
  );
  t.ok((ops.ipcache.get(node) ?? 0) >= FIRST_CIDR_IDENTITY, 'not a node yet: a CIDR identity');
  remote.set(node, RESERVED['remote-node']);
  await engine.setRemoteEndpoints(remote);
  t.equal(ops.ipcache.get(node), RESERVED['remote-node'], 'a node now: remote-node');
  t.same(
    ops.entriesOf(eps[1].id).filter((e) => e.direction === 'egress' && e.peer >= FIRST_CIDR_IDENTITY),
    [],
    "db's egress: no CIDR identity for it",
  );
  t.same(await restartChanges(store, ops, eps, undefined, new Map(remote)), NO_CHANGES, 'a restart changes nothing');
});

t.test("a CIDR rule on a pod's own address selects nothing (its labels do), as the pod comes and goes", async (t) => {
  const ops = new MemoryPolicyOps(100_000, 100_000);
  const { engine, eps, store } = await engineWithEndpoints(ops, ['web', 'db']);
  t.teardown(() => engine.close());
  const [web, db] = eps; // 10.0.0.2, 10.0.0.3
  // A replica of web: deleting web and adding it back take the engine's one-endpoint shortcuts
  // (desired-endpoint.ts), which must hide and give back the prefix as a whole build does.
  const replica = testEndpoint(3, { app: 'web' }, web.identity!, '10.0.0.4');
  await engine.endpointAttached(replica);
  const all = [web, db, replica];
  const pod = '10.0.0.2/32';
  const toCidr = (name: string, cidr: string) =>
    JSON.stringify({
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name },
      spec: { endpointSelector: { matchLabels: { app: 'db' } }, egress: [{ toCIDR: [cidr] }] },
    });
  // The pod's prefix first, another after it: the restart (which found only the other's number in the
  // ipcache) gave the pod's a new one, and rewrote the rules naming it and world's.
  await engine.importText(toCidr('to-pod', pod));
  await engine.importText(toCidr('to-net', '10.9.0.0/16'));
  await engine.importText(wide(1));
  const cidrPeers = (id: number, dir: string) =>
    ops
      .entriesOf(id)
      .filter((e) => e.direction === dir && e.peer >= FIRST_CIDR_IDENTITY)
      .map((e) => e.peer);
  t.equal(ops.ipcache.get(pod), web.identity, "the pod's address is the pod in the ipcache");
  t.same(cidrPeers(db.id, 'egress'), [ops.ipcache.get('10.9.0.0/16')], "db's egress: the /16's identity, none for the pod's /32");
  const worldPeers = cidrPeers(web.id, 'ingress').sort();
  t.same(await restartChanges(store, ops, all), NO_CHANGES, 'a restart changes nothing');
  t.same(cidrPeers(web.id, 'ingress').sort(), worldPeers, "web's world rule: the same CIDR identities after it");

  // The pod gone: its address is a prefix like any other, and stays one across a restart.
  await engine.endpointDeleted(web);
  const id = ops.ipcache.get(pod) ?? 0;
  t.ok(id >= FIRST_CIDR_IDENTITY, 'the /32 has a CIDR identity in the ipcache once the pod is gone');
  t.ok(cidrPeers(db.id, 'egress').includes(id), "db's egress allows it");
  t.ok(cidrPeers(replica.id, 'ingress').includes(id), "the replica's world rule includes it");
  t.same(await restartChanges(store, ops, [db, replica]), NO_CHANGES, 'a restart changes nothing');

  // A pod with that address again: its identity goes from the ipcache and from both rules.
  await engine.endpointAttached(web);
  t.equal(ops.ipcache.get(pod), web.identity, 'the pod in the ipcache again');
  t.notOk(cidrPeers(db.id, 'egress').includes(id), "db's egress: not the pod's address");
  t.notOk(cidrPeers(replica.id, 'ingress').includes(id), "the replica's world rule: not the pod's address");
  t.same(await restartChanges(store, ops, all), NO_CHANGES, 'a restart changes nothing');
});

t.test("the same for a pod on another node (cluster mode's remote endpoints)", async (t) => {
  const ops = new MemoryPolicyOps(100_000, 100_000);
  const { engine, eps, store } = await engineWithEndpoints(ops, ['web', 'db']);
  t.teardown(() => engine.close());
  const [web, db] = eps;
  const pod = '10.7.0.9/32';
  const remote = new Map([[pod, web.identity!]]);
  await engine.setRemoteEndpoints(remote);
  await engine.importText(
    JSON.stringify({
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'to-pod' },
      spec: { endpointSelector: { matchLabels: { app: 'db' } }, egress: [{ toCIDR: [pod, '10.9.0.0/16'] }] },
    }),
  );
  const cidrPeers = () => ops.entriesOf(db.id).filter((e) => e.direction === 'egress' && e.peer >= FIRST_CIDR_IDENTITY);
  t.equal(ops.ipcache.get(pod), web.identity, "the remote pod's identity in the ipcache");
  t.same(
    cidrPeers().map((e) => e.peer),
    [ops.ipcache.get('10.9.0.0/16')],
    "db's egress: the /16 only, no CIDR identity for the remote pod's address",
  );
  t.same(await restartChanges(store, ops, eps, undefined, new Map(remote)), NO_CHANGES, 'a restart changes nothing');
  remote.delete(pod); // the pod went (the cluster edits the map in place)
  await engine.setRemoteEndpoints(remote);
  const id = ops.ipcache.get(pod) ?? 0;
  t.ok(id >= FIRST_CIDR_IDENTITY, 'a CIDR identity in the ipcache once the pod is gone');
  t.ok(
    cidrPeers().some((e) => e.peer === id),
    "db's egress allows it",
  );
  t.same(await restartChanges(store, ops, eps, undefined, new Map()), NO_CHANGES, 'a restart changes nothing');
});

t.test('a CIDR rule on an address DNS taught: its FQDN identity carries the prefix, and a restart changes nothing', async (t) => {
  const ops = new MemoryPolicyOps(100_000, 100_000);
  const store = new MemoryStore();
  const hosts = () => ['192.0.2.1'];
  let fqdn = new FqdnState(0);
  const first = await PolicyEngine.open({ store, ops, hostAddresses: hosts, fqdn });
  const web = testEndpoint(1, { app: 'web' }, await first.identityFor({ app: 'web' }), '10.0.0.2');
  const db = testEndpoint(2, { app: 'db' }, await first.identityFor({ app: 'db' }), '10.0.0.3');
  for (const ep of [web, db]) {
    ops.flags.set(ep.hostIfIndex, 0);
    await first.endpointAttached(ep);
  }
  await first.start();
  let engine = first;
  t.teardown(() => engine.close());
  const addr = '198.18.0.2/32';
  const egress = (name: string, rule: object) =>
    JSON.stringify({
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name },
      spec: { endpointSelector: { matchLabels: { app: 'db' } }, egress: [rule] },
    });
  // The address's prefix first, another after it: a restart that cannot find the first's number in
  // the ipcache gives it a new one.
  await engine.importText(egress('to-ip', { toCIDR: [addr] }));
  await engine.importText(egress('to-net', { toCIDR: ['10.9.0.0/16'] }));
  await engine.importText(egress('to-name', { toFQDNs: [{ matchName: 'db.example.com' }] }));
  await engine.importText(wide(1));
  const cidrPeers = (id: number, dir: string) =>
    ops
      .entriesOf(id)
      .filter((e) => e.direction === dir && e.peer >= FIRST_CIDR_IDENTITY)
      .map((e) => e.peer)
      .sort();
  const peers = () => ({ db: cidrPeers(db.id, 'egress'), web: cidrPeers(web.id, 'ingress') });
  const dead = () => {
    const held = new Set(ops.ipcache.values());
    return [...cidrPeers(db.id, 'egress'), ...cidrPeers(web.id, 'ingress')].filter((p) => !held.has(p));
  };
  const restart = async () => {
    await engine.close();
    const state = new FqdnState(0);
    state.restore(fqdn.persisted(), new Map(ops.ipcache), (id) => identityKind(id) === 'fqdn', 0, 60_000);
    fqdn = state;
    engine = await PolicyEngine.open({ store, ops, hostAddresses: hosts, fqdn });
    for (const ep of [web, db]) await engine.endpointAttached(ep);
    return engine.start();
  };
  const learn = async () => {
    const r = fqdn.learn(db.id, ['db.example.com.'], [{ ip: '198.18.0.2', ttl: 3600 }], 0);
    await engine.fqdnChanged(r.changed, r.newIdentity);
  };

  await learn();
  const learned = ops.ipcache.get(addr) ?? 0;
  t.equal(identityKind(learned), 'fqdn', 'the address has its FQDN identity in the ipcache');
  t.same(dead(), [], 'no rule names an identity the ipcache does not hold');
  t.ok(cidrPeers(db.id, 'egress').includes(learned), "db's egress allows the FQDN identity (toCIDR and toFQDNs)");
  const before = peers();
  t.same(await restart(), NO_CHANGES, 'a restart changes nothing');
  t.same(peers(), before, 'the same identities in both rules after it');

  // The answer expires: the address is a prefix like any other again, and stays one across a restart.
  const gone = fqdn.expire(3_600_001, () => false);
  t.same(gone.changed, [addr], 'the answer expired');
  await engine.fqdnChanged(gone.changed, false);
  const id = ops.ipcache.get(addr) ?? 0;
  t.equal(identityKind(id), 'cidr', 'the /32 has a CIDR identity in the ipcache');
  t.ok(cidrPeers(db.id, 'egress').includes(id), "db's egress allows it");
  t.ok(cidrPeers(web.id, 'ingress').includes(id), "web's world rule includes it");
  t.same(dead(), [], 'no rule names an identity the ipcache does not hold');
  t.same(await restart(), NO_CHANGES, 'a restart changes nothing');

  // Taught again: the CIDR identity goes again.
  await learn();
  t.equal(identityKind(ops.ipcache.get(addr) ?? 0), 'fqdn', 'the FQDN identity in the ipcache again');
  t.notOk(cidrPeers(db.id, 'egress').includes(id), "db's egress: not the CIDR identity");
  t.same(dead(), [], 'no rule names an identity the ipcache does not hold');
  t.same(await restart(), NO_CHANGES, 'a restart changes nothing');

  // The toFQDNs rule deleted: the address's FQDN entry goes with it, and its CIDR identity comes back
  // in the same sync.
  await engine.delete(['to-name']);
  t.equal(identityKind(ops.ipcache.get(addr) ?? 0), 'cidr', 'a CIDR identity in the ipcache');
  t.ok(cidrPeers(db.id, 'egress').includes(ops.ipcache.get(addr) ?? 0), "db's egress allows it");
  t.same(dead(), [], 'no rule names an identity the ipcache does not hold');
  t.same(await restart(), NO_CHANGES, 'a restart changes nothing');
});
