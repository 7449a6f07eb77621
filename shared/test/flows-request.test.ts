// `membrane observe` flags -> GetFlowsRequest, with hubble observe's semantics.
import t from 'tap';
import { compileFilters } from '../src/flows/filter.ts';
import { buildFilters, buildRequest, parseTime, type FilterFlag } from '../src/flows/request.ts';
import type { Flow } from '../src/flows/types.ts';

const f = (...flags: FilterFlag[]) => buildFilters(flags);

t.test('selection flags', async (t) => {
  t.same(buildRequest({}), { number: 20 });
  t.same(buildRequest({ follow: true }), { follow: true });
  t.same(buildRequest({ follow: true, last: 5 }), { follow: true, number: 5 });
  t.same(buildRequest({ first: 3 }), { first: true, number: 3 });
  t.same(buildRequest({ all: true }), {}, '--all: every flow held');
  t.same(buildRequest({ since: '5m' }, [], 1_000_000).since, { seconds: 700, nanos: 0 });
  t.equal(buildRequest({ since: '5m' }, [], 1_000_000).number, undefined, 'a time window shows all of it');
  t.same(buildRequest({ fieldMask: ['time', 'source.pod_name'] }).fieldMask, { paths: ['time', 'source.pod_name'] });
  t.throws(() => buildRequest({ first: 1, follow: true }), /cannot set both --first and --follow/);
  t.throws(() => buildRequest({ first: 1, last: 2 }), /cannot set both --first and --last/);
  t.throws(() => buildRequest({ all: true, last: 2 }), /--last and --all/);
  t.same(parseTime('1h30m', 10_000_000), { seconds: 10_000 - 5400, nanos: 0 });
  t.same(parseTime('2024-01-02T03:04:05.5Z'), { seconds: 1704164645, nanos: 500_000_000 });
  t.throws(() => parseTime('yesterday-ish'), /neither a duration/);
});

t.test('one-side flags fill every filter; either-side flags split into source and destination', async (t) => {
  t.same(f(['verdict', 'dropped'], ['type', 'drop']).whitelist, [{ verdict: ['DROPPED'], eventType: [{ type: 1 }] }]);
  t.same(f(['from-label', 'app=a'], ['to-label', 'app=b'], ['protocol', 'tcp']).whitelist, [
    { sourceLabel: ['app=a'], destinationLabel: ['app=b'], protocol: ['tcp'] },
  ]);
  t.same(
    f(['ip', '10.0.0.1'], ['port', '80']).whitelist,
    [
      { sourceIp: ['10.0.0.1'], sourcePort: ['80'] },
      { destinationIp: ['10.0.0.1'], destinationPort: ['80'] },
    ],
    'as hubble: from A with source port 80, or to A with destination port 80',
  );
  t.same(f(['identity', 'world'], ['verdict', 'DROPPED']).whitelist, [
    { sourceIdentity: [2], verdict: ['DROPPED'] },
    { destinationIdentity: [2], verdict: ['DROPPED'] },
  ]);
  t.same(f(['from-identity', '300']).whitelist, [{ sourceIdentity: [300] }]);
  t.same(f(['endpoint', '7']).whitelist, [{ membrane: { sourceEndpoint: [7] } }, { membrane: { destinationEndpoint: [7] } }]);
  t.same(f(['policy', 'shop/allow']).whitelist, [{ membrane: { policyName: ['shop/allow'] } }]);
});

t.test('types, flags and enums as hubble spells them', async (t) => {
  t.same(f(['type', 'trace:to-endpoint']).whitelist, [{ eventType: [{ type: 4, matchSubType: true, subType: 0 }] }]);
  t.same(f(['type', 'trace:from-endpoint'], ['type', 'policy-verdict']).whitelist, [
    { eventType: [{ type: 4, matchSubType: true, subType: 5 }, { type: 5 }] },
  ]);
  t.same(f(['type', 'l7']).whitelist, [{ eventType: [{ type: 129 }] }]);
  t.same(f(['type', '1:133']).whitelist, [{ eventType: [{ type: 1, matchSubType: true, subType: 133 }] }]);
  t.same(f(['type', 'flow-end']).whitelist, [{ membrane: { event: ['FLOW_END'] } }], "Membrane's own event names");
  t.same(f(['tcp-flags', 'syn,ack']).whitelist, [{ tcpFlags: [{ SYN: true, ACK: true }] }]);
  t.same(f(['ipv4', 'true'], ['ip-version', 'v6']).whitelist, [{ ipVersion: ['IPv4', 'IPv6'] }]);
  t.same(f(['traffic-direction', 'ingress']).whitelist, [{ trafficDirection: ['INGRESS'] }]);
  t.same(f(['drop-reason-desc', 'policy_denied']).whitelist, [{ dropReasonDesc: ['POLICY_DENIED'] }]);
  t.same(f(['interface', 'mbr1'], ['interface', '7']).whitelist, [{ interface: [{ name: 'mbr1' }, { index: 7 }] }]);
  t.same(f(['node-name', 'n*']).whitelist, [{ nodeName: ['n*'] }]);
  t.same(f(['http-header', 'x-a:1:2']).whitelist, [{ httpHeader: [{ key: 'x-a', value: '1:2' }] }]);
  t.same(f(['unencrypted', 'true']).whitelist, [{ encrypted: [false] }]);
  t.throws(() => f(['verdict', 'MAYBE']), /--verdict "MAYBE"/);
  t.throws(() => f(['type', 'nope']), /--type "nope": not one of drop/);
  t.throws(() => f(['type', 'trace:sideways']), /unknown subtype "sideways"/);
  t.throws(() => f(['tcp-flags', 'syn,wat']), /unknown TCP flag "wat"/);
  t.throws(() => f(['identity', 'nobody']), /--identity "nobody"/);
  t.throws(() => f(['drop-reason-desc', 'SOURCE_SPOOFED']), /not a drop reason/);
  t.throws(() => f(['traffic-direction', 'up']), /expected ingress or egress/);
});

t.test('namespaces become pod filters', async (t) => {
  t.same(f(['namespace', 'shop']).whitelist, [{ sourcePod: ['shop/'] }, { destinationPod: ['shop/'] }]);
  t.same(f(['from-namespace', 'shop'], ['to-pod', 'web']).whitelist, [{ destinationPod: ['web'], sourcePod: ['shop/'] }]);
  t.same(f(['to-namespace', 'shop'], ['to-pod', 'web']).whitelist, [{ destinationPod: ['shop/web'] }]);
  t.same(f(['all-namespaces', 'true']).whitelist, [{ sourcePod: ['/'] }, { destinationPod: ['/'] }]);
  t.same(f(['namespace', 'a'], ['pod', 'b']).whitelist, [{ sourcePod: ['a/b'] }, { destinationPod: ['a/b'] }]);
  t.throws(() => f(['namespace', 'a'], ['to-pod', 'b']), /filters --to-pod and --namespace cannot be combined/);
  t.throws(() => f(['from-ip', '1.1.1.1'], ['from-namespace', 'a']), /cannot be combined/);
  t.throws(() => f(['label', 'a'], ['from-label', 'b']), /--from-label and --label cannot be combined/);
});

t.test('--not negates the next flag only', async (t) => {
  const r = f(['not', 'true'], ['ip', '10.0.0.1'], ['verdict', 'DROPPED']);
  t.same(r.whitelist, [{ verdict: ['DROPPED'] }]);
  t.same(r.blacklist, [{ sourceIp: ['10.0.0.1'] }, { destinationIp: ['10.0.0.1'] }]);
  t.same(f(['not', ''], ['verdict', 'DROPPED'], ['not', ''], ['verdict', 'AUDIT']).blacklist, [
    { verdict: ['DROPPED', 'AUDIT'] },
  ]);
  t.throws(() => f(['verdict', 'DROPPED'], ['not', '']), /trailing --not/);
  t.throws(() => f(['not', ''], ['not', '']), /consecutive --not/);
});

t.test('--allowlist / --denylist take JSON FlowFilters (proto or JSON names)', async (t) => {
  const r = buildRequest({
    allowlist: ['{"source_ip":["10.0.0.1"],"event_type":[{"type":1}]}', '[{"verdict":["DROPPED"]}]'],
    denylist: ['{"destinationPort":["53"]}'],
  });
  t.same(r.whitelist, [{ sourceIp: ['10.0.0.1'], eventType: [{ type: 1 }] }, { verdict: ['DROPPED'] }]);
  t.same(r.blacklist, [{ destinationPort: ['53'] }]);
  t.throws(() => buildRequest({ allowlist: ['{"source_ipz":[]}'] }), /--allowlist: source_ipz: unknown field/);
  t.throws(() => buildRequest({ allowlist: ['{"verdict":["MAYBE"]}'] }), /--allowlist: verdict\[0\]: "MAYBE"/);
  t.throws(() => buildRequest({ denylist: ['{nope'] }), /--denylist: not JSON/);
});

t.test('the request filters what the server would', async (t) => {
  const base = {
    time: { seconds: 1, nanos: 0 },
    verdict: 'FORWARDED',
    IP: { source: '10.1.0.2', destination: '10.1.0.3', ipVersion: 'IPv4' },
    l4: { TCP: { sourcePort: 40000, destinationPort: 80 } },
    source: { namespace: 'shop', podName: 'a' },
    destination: {},
  } as Flow;
  const drop = { ...base, verdict: 'DROPPED', IP: { source: 'fd00::2', destination: 'fd00::3', ipVersion: 'IPv6' } } as Flow;
  const req = buildRequest({}, [
    ['verdict', 'DROPPED'],
    ['ip', 'fd00::3'],
  ]);
  const p = compileFilters(req.whitelist, req.blacklist);
  t.same([p(base), p(drop)], [false, true]);
  const ns = buildRequest({}, [['namespace', 'shop']]);
  const q = compileFilters(ns.whitelist, ns.blacklist);
  t.same([q(base), q(drop)], [true, true]);
  const notNs = buildRequest({}, [
    ['not', ''],
    ['from-namespace', 'shop'],
  ]);
  const r = compileFilters(notNs.whitelist, notNs.blacklist);
  t.same([r(base), r({ ...base, source: {} })], [false, true]);
});
