// The proxy workers' view of the policy: built from the engine's compiled state, it decides each
// request the way the datapath and the HTTP rules together would, on both local ends of a connection,
// and follows policy changes on open connections.
import t from 'tap';
import { MemoryStore } from '../src/store/index.ts';
import { PolicyEngine } from '../src/policy/engine.ts';
import { ProxyView } from '../src/l7/proxy/view.ts';
import { normalizeTarget, type RequestView } from '../src/l7/http/rules.ts';
import { decodeRecord, readBatch } from '../src/l7/proxy/record-reader.ts';
import { RecordWriter } from '../src/l7/proxy/records.ts';
import { MemoryPolicyOps, testEndpoint } from './lib/policy.ts';

const req = (method: string, target: string, headers: Record<string, string> = {}): RequestView => {
  const n = normalizeTarget(target, 'svc');
  return {
    method,
    path: n.path,
    altPath: n.altPath,
    host: n.host,
    names: Object.keys(headers).map((k) => k.toLowerCase()),
    values: Object.values(headers),
  };
};

async function setup() {
  const ops = new MemoryPolicyOps();
  const engine = await PolicyEngine.open({
    store: new MemoryStore(),
    ops,
    hostAddresses: () => ['192.0.2.1'],
    proxyPorts: () => ({ http: 15001 }),
  });
  await engine.start();
  const add = async (id: number, labels: Record<string, string>, ip: string) => {
    const ep = testEndpoint(id, labels, await engine.identityFor(labels), ip);
    ops.flags.set(ep.hostIfIndex, 0);
    await engine.endpointAttached(ep);
    return ep;
  };
  return { engine, add };
}

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/public/.*"}, {method: POST, path: /submit, headers: ["X-Token: s3cret"]}]}}]
  - fromCIDR: [198.18.0.0/24]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: /status}]}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-out}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: api}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET|POST}]}}]
`;

t.test('requests are decided on every local end that proxies the traffic', async (t) => {
  const { engine, add } = await setup();
  const api = await add(1, { app: 'api' }, '10.0.0.2');
  const client = await add(2, { app: 'client' }, '10.0.0.3');
  await add(3, { app: 'other' }, '10.0.0.4');
  await engine.importText(POLICY);
  const snap = engine.proxySnapshot();
  t.equal(snap.endpoints.find((e) => e.id === 3)?.policy, -1, 'an endpoint no policy selects sends no table');
  const view = new ProxyView(JSON.parse(JSON.stringify(snap))); // it crosses a socket as JSON
  const c = view.connection('10.0.0.3', '10.0.0.2', 80);
  t.match(c, { src: { identity: client.identity, endpoint: client.id }, dst: { identity: api.identity, endpoint: api.id } });
  t.same(
    c.sides.map((s) => s.direction),
    ['egress', 'ingress'],
    "the client's egress and the api's ingress",
  );
  const get = view.decide(c, req('GET', '/public/a'));
  t.match(get, {
    allowed: true,
    sides: [
      { direction: 'egress', allowed: true },
      { direction: 'ingress', allowed: true, http: { path: 'spec.ingress[0].toPorts[0].rules.http[0]' } },
    ],
  });
  t.match(
    view.decide(c, req('GET', '/private')),
    { allowed: false, sides: [{ allowed: true }, { allowed: false }] },
    'the ingress rules deny',
  );
  t.equal(view.decide(c, req('POST', '/submit')).allowed, false, 'POST /submit needs the header');
  t.equal(view.decide(c, req('POST', '/submit', { 'X-Token': 's3cret' })).allowed, true);
  t.match(
    view.decide(c, req('DELETE', '/public/a')),
    { allowed: false, sides: [{ direction: 'egress', allowed: false }] },
    "the client's egress rules deny DELETE",
  );
  // From the world (CIDR identity): only the ingress side.
  const w = view.connection('198.18.0.7', '10.0.0.2', 80);
  t.same(
    w.sides.map((s) => s.direction),
    ['ingress'],
  );
  t.ok(view.decide(w, req('GET', '/status')).allowed);
  t.notOk(view.decide(w, req('GET', '/public/a')).allowed, 'the world gets only its own rule');
});

t.test('policy changes reach open connections: plain allow passes, removed allow denies', async (t) => {
  const { engine, add } = await setup();
  await add(1, { app: 'api' }, '10.0.0.2');
  await add(2, { app: 'client' }, '10.0.0.3');
  await engine.importText(POLICY);
  let view = new ProxyView(engine.proxySnapshot());
  let c = view.connection('10.0.0.3', '10.0.0.2', 80);
  t.notOk(view.decide(c, req('GET', '/private')).allowed);
  // The api's ingress becomes L3/L4 only; the client keeps L7 egress, so the api side is still sent.
  await engine.importText(
    POLICY.replace(
      `toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/public/.*"}, {method: POST, path: /submit, headers: ["X-Token: s3cret"]}]}}]`,
      `toPorts: [{ports: [{port: "80", protocol: TCP}]}]`,
    ),
  );
  const next = new ProxyView(engine.proxySnapshot());
  t.not(next.revision, view.revision, 'each snapshot is a new revision');
  view = next;
  c = view.connection('10.0.0.3', '10.0.0.2', 80);
  t.match(view.decide(c, req('GET', '/private')), {
    allowed: true,
    sides: [
      { direction: 'egress', l7: true },
      { direction: 'ingress', allowed: true, l7: false },
    ],
  });
  // Now the api no longer allows the client at all.
  await engine.importText(
    POLICY.replace('- fromEndpoints: [{matchLabels: {app: client}}]', '- fromEndpoints: [{matchLabels: {app: nobody}}]'),
  );
  view = new ProxyView(engine.proxySnapshot());
  c = view.connection('10.0.0.3', '10.0.0.2', 80);
  t.match(
    view.decide(c, req('GET', '/public/a')),
    {
      allowed: false,
      sides: [
        { direction: 'egress', allowed: true },
        { direction: 'ingress', allowed: false, l7: false },
      ],
    },
    'default deny on the ingress side',
  );
});

t.test('the last HTTP rule of a direction goes: the table is still sent, so held connections are denied', async (t) => {
  const { engine, add } = await setup();
  await add(1, { app: 'api' }, '10.0.0.2');
  await add(2, { app: 'client' }, '10.0.0.3');
  const apiOnly = POLICY.slice(0, POLICY.indexOf('---'));
  await engine.importText(apiOnly);
  const decide = (target: string) => {
    const view = new ProxyView(JSON.parse(JSON.stringify(engine.proxySnapshot())));
    return view.decide(view.connection('10.0.0.3', '10.0.0.2', 80), req('GET', target));
  };
  t.match(decide('/public/a'), { allowed: true, sides: [{ direction: 'ingress', l7: true }] });
  // The api's ingress is L3/L4 only and no longer selects the client: no HTTP rule is left anywhere.
  await engine.importText(
    apiOnly
      .replace('- fromEndpoints: [{matchLabels: {app: client}}]', '- fromEndpoints: [{matchLabels: {app: nobody}}]')
      .replace(/, rules: \{http: \[[^\n]*\]\}\}\]/g, '}]'),
  );
  t.notOk(engine.hasHttpRules(), 'no HTTP rule left');
  t.match(
    decide('/public/a'),
    { allowed: false, sides: [{ direction: 'ingress', allowed: false, l7: false }] },
    'a connection the proxy still holds is denied (it was forwarded as unrestricted)',
  );
  // No policy selects the api any more: the datapath allows everything, and so does the proxy.
  await engine.delete(['api']);
  t.match(decide('/public/a'), { allowed: true, sides: [] }, 'with no policy at all the api is unrestricted');
});

t.test('cached decisions: only where method, path and host decide, and never past a policy change', async (t) => {
  const { engine, add } = await setup();
  await add(1, { app: 'api' }, '10.0.0.2');
  await add(2, { app: 'client' }, '10.0.0.3');
  await add(3, { app: 'other' }, '10.0.0.4');
  await engine.importText(POLICY);
  const view = new ProxyView(engine.proxySnapshot());
  // The api's ingress has a rule that needs a header: nothing is cached, each request is matched.
  const c = view.connection('10.0.0.3', '10.0.0.2', 80);
  t.equal(c.verdicts, undefined, 'a side with header rules is not cached');
  t.notOk(view.decide(c, req('POST', '/submit')).allowed);
  t.ok(view.decide(c, req('POST', '/submit', { 'X-Token': 's3cret' })).allowed, 'the header counts on every request');
  t.notOk(view.decide(c, req('POST', '/submit', { 'X-Token': 'wrong' })).allowed);
  // From the world: method and path rules only, cached per method, path and host.
  const w = view.connection('198.18.0.7', '10.0.0.2', 80);
  t.ok(w.verdicts, 'method/path rules are cached');
  t.ok(view.decide(w, req('GET', '/status')).allowed);
  t.ok(view.decide(w, req('GET', '/status')).allowed, 'the cached allow');
  t.notOk(view.decide(w, req('GET', '/status/x')).allowed, 'another path is decided on its own');
  t.notOk(view.decide(w, req('POST', '/status')).allowed, 'another method too');
  t.notOk(view.decide(w, req('GET', '/public/../status/x')).allowed, 'normalized paths are the keys');
  // "/x%2Fy/../status" is "/status" as written and "/x/status" to nginx, which decodes %2F first: the
  // cached allow of "/status" (the same strict key, and the last decision) must not answer it.
  t.ok(view.decide(w, req('GET', '/status')).allowed);
  t.notOk(
    view.decide(w, req('GET', '/x%2Fy/../status')).allowed,
    'a path read otherwise by lenient servers: decided, not cached',
  );
  t.ok(view.decide(w, req('GET', '/status')).allowed, 'and the plain path after it still allowed');
  // Ever new paths: the cache stays bounded and answers stay right.
  const wrong: number[] = [];
  for (let i = 0; i < 3000; i++)
    if (view.decide(w, req('GET', i % 2 ? '/status' : `/x${i}`)).allowed !== (i % 2 === 1)) wrong.push(i);
  t.same(wrong, [], 'every answer right while the cache fills and starts over');
  t.ok(w.verdicts!.size <= 1024, `bounded (${w.verdicts!.size})`);
  // The policy changes: a new view, new connection policies, no decision carried over.
  await engine.importText(POLICY.replace('path: /status', 'path: /health'));
  const next = new ProxyView(engine.proxySnapshot());
  const w2 = next.connection('198.18.0.7', '10.0.0.2', 80);
  t.not(w2, w);
  t.notOk(next.decide(w2, req('GET', '/status')).allowed, 'the old cached allow is gone');
  t.ok(next.decide(w2, req('GET', '/health')).allowed);
});

t.test('records round-trip without header values', async (t) => {
  const { engine, add } = await setup();
  await add(1, { app: 'api' }, '10.0.0.2');
  await add(2, { app: 'client' }, '10.0.0.3');
  await engine.importText(POLICY);
  const view = new ProxyView(engine.proxySnapshot());
  const policy = view.connection('10.0.0.3', '10.0.0.2', 80);
  const d = view.decide(policy, req('GET', '/private', { authorization: 'Bearer x' }));
  const x = {
    method: 'GET',
    path: '/private',
    host: 'svc',
    protocol: 'HTTP/1.1',
    verdict: { allowed: false, edits: [], info: d },
    startMs: 0,
    status: 403,
    latencyNs: 1234,
    localReason: 'denied' as const,
  };
  const w = new RecordWriter();
  w.add('response', x, { srcPort: 40000, dstPort: 80, policy }, 1e12);
  const batch = w.take(0)!;
  const r = decodeRecord(batch, readBatch(batch).offsets[0]);
  t.match(r, {
    kind: 'response',
    src: { ip: '10.0.0.3', port: 40000, endpoint: 2 },
    dst: { ip: '10.0.0.2', port: 80, endpoint: 1 },
    method: 'GET',
    path: '/private',
    status: 403,
    latencyNs: 1234,
    verdict: 'denied',
    reason: 'denied',
    sides: [
      { direction: 'egress', allowed: true },
      { direction: 'ingress', allowed: false },
    ],
  });
  t.notMatch(JSON.stringify(r), /Bearer/, 'header values are not sent to the agent');
  t.notOk(batch.includes('Bearer'), 'not in the bytes either');
});
