import t from 'tap';
import { compileFilters, FilterError, parseSelector } from '../src/flows/filter.ts';
import { buildRequest, parseTime } from '../src/flows/request.ts';
import type { Flow } from '../src/flows/types.ts';

const base: Flow = {
  time: { seconds: 1, nanos: 0 }, verdict: 'FORWARDED', ip: { source: '10.1.0.2', destination: '10.1.0.3', ipVersion: 'IPv4' },
  l4: { tcp: { sourcePort: 40000, destinationPort: 80, flags: { SYN: true } } },
  source: { id: 1, identity: 257, labels: ['k8s:app=client', 'k8s:tier=front'], namespace: 'shop', podName: 'client-7d' },
  destination: { id: 2, identity: 258, labels: ['docker:app=web'] },
  nodeName: 'n1', eventType: 'FLOW_NEW', trafficDirection: 'INGRESS', isReply: { value: false },
  ingressAllowedBy: [{ name: 'allow-web' }],
};
const drop: Flow = { ...base, verdict: 'DROPPED', eventType: 'DROP', dropReasonDesc: 'POLICY_DENIED', ingressAllowedBy: undefined,
  l4: { udp: { sourcePort: 5353, destinationPort: 53 } }, ip: { source: 'fd00::2', destination: 'fd00::3', ipVersion: 'IPv6' }, isReply: undefined };
const m = (wl: object[], bl: object[] = []) => { const p = compileFilters(wl, bl); return [p(base), p(drop)]; };

t.test('fields: AND inside a filter, OR over values and over whitelist filters, blacklist wins', async (t) => {
  t.same(m([]), [true, true]);
  t.same(m([{ verdict: ['DROPPED'] }]), [false, true]);
  t.same(m([{ verdict: ['DROPPED', 'FORWARDED'] }]), [true, true]);
  t.same(m([{ verdict: ['FORWARDED'], protocol: ['udp'] }]), [false, false]);
  t.same(m([{ verdict: ['FORWARDED'] }, { protocol: ['udp'] }]), [true, true]);
  t.same(m([], [{ eventType: ['DROP'] }]), [true, false]);
  t.same(m([{ sourceIp: ['10.1.0.0/24'] }]), [true, false]);
  t.same(m([{ destinationIp: ['fd00::/64', '10.9.9.9'] }]), [false, true]);
  t.same(m([{ protocol: ['TCP'] }]), [true, false]);
  t.same(m([{ destinationPort: ['53', '79-81'] }]), [true, true]);
  t.same(m([{ sourcePort: ['40000'] }]), [true, false]);
  t.same(m([{ reply: [false] }]), [true, false], 'unknown reply matches neither');
  t.same(m([{ sourceIdentity: [257] }, { destinationEndpoint: [9] }]), [true, true]);
  t.same(m([{ trafficDirection: ['EGRESS'] }]), [false, false]);
  t.same(m([{ dropReasonDesc: ['POLICY_DENIED'] }]), [false, true]);
  t.same(m([{ ipVersion: ['IPv6'] }]), [false, true]);
  t.same(m([{ policyName: ['allow-web'] }]), [true, false]);
  t.same(m([{ sourcePod: ['shop/client'] }]), [true, true]);
  t.same(m([{ sourcePod: ['other/client'] }]), [false, false]);
  t.same(m([{ nodeName: ['n2'] }]), [false, false]);
});

t.test('label selectors: any source unless given, presence, absence, conjunction', async (t) => {
  t.same(m([{ sourceLabel: ['app=client'] }]), [true, true]);
  t.same(m([{ sourceLabel: ['k8s:app=client'] }]), [true, true]);
  t.same(m([{ sourceLabel: ['docker:app=client'] }]), [false, false]);
  t.same(m([{ destinationLabel: ['app=web'] }]), [true, true]);
  t.same(m([{ sourceLabel: ['app=client,tier=back'] }]), [false, false]);
  t.same(m([{ sourceLabel: ['app=client,tier'] }]), [true, true]);
  t.same(m([{ sourceLabel: ['!tier'] }, { destinationLabel: ['!app'] }]), [false, false]);
  t.same(parseSelector('any:app=x, !b'), [{ key: 'app', source: null, absent: false, value: 'x' }, { key: 'b', source: null, absent: true }]);
});

t.test('bad filters are errors that name the field', async (t) => {
  t.throws(() => compileFilters([{ sourceIp: ['10.0.0.300'] }]), /whitelist\[0\]\.source_ip: "10.0.0.300"/);
  t.throws(() => compileFilters([], [{ destinationIp: ['10.0.0.0/33'] }]), /blacklist\[0\]\.destination_ip.*prefix/);
  t.throws(() => compileFilters([{ protocol: ['tcpx'] }]), /unknown protocol/);
  t.throws(() => compileFilters([{ sourcePort: ['80-70'] }]), /not a port/);
  t.throws(() => compileFilters([{ sourceLabel: ['!a=b'] }]), FilterError);
});

t.test('CLI flags -> request', async (t) => {
  t.same(buildRequest({}), { number: 20 });
  t.same(buildRequest({ follow: true }), { follow: true });
  t.same(buildRequest({ follow: true, last: 5 }), { follow: true, number: 5 });
  t.same(buildRequest({ first: 3 }), { first: true, number: 3 });
  t.same(buildRequest({ verdict: ['dropped'], type: ['drop'] }), { number: 20, whitelist: [{ verdict: ['DROPPED'], eventType: ['DROP'] }] });
  t.same(buildRequest({ type: ['trace'] }).whitelist, [{ eventType: ['FLOW_NEW', 'FLOW_END'] }]);
  t.same(buildRequest({ fromLabel: ['app=a'], toLabel: ['app=b'], protocol: ['tcp'] }).whitelist,
    [{ protocol: ['tcp'], sourceLabel: ['app=a'], destinationLabel: ['app=b'] }]);
  t.same(buildRequest({ ip: ['10.0.0.1'], port: ['80'] }).whitelist, [
    { sourceIp: ['10.0.0.1'], sourcePort: ['80'] }, { sourceIp: ['10.0.0.1'], destinationPort: ['80'] },
    { destinationIp: ['10.0.0.1'], sourcePort: ['80'] }, { destinationIp: ['10.0.0.1'], destinationPort: ['80'] },
  ], '--ip and --port each on either end');
  t.same(buildRequest({ since: '5m' }, 1_000_000).since, { seconds: 700, nanos: 0 });
  t.equal(buildRequest({ since: '5m' }, 1_000_000).number, undefined, 'a time window shows all of it');
  t.throws(() => buildRequest({ verdict: ['MAYBE'] }), /--verdict "MAYBE" is not one of/);
  t.throws(() => buildRequest({ type: ['l7'] }), /--type "l7"/);
  t.throws(() => buildRequest({ first: 1, follow: true }), /cannot be combined/);
  t.throws(() => buildRequest({ fromLabel: ['!x=y'] }), /label selector/);
  t.same(parseTime('1h30m', 10_000_000), { seconds: 10_000 - 5400, nanos: 0 });
  t.same(parseTime('2024-01-02T03:04:05.5Z'), { seconds: 1704164645, nanos: 500_000_000 });
  t.throws(() => parseTime('yesterday-ish'), /neither a duration/);
});

t.test('the request filters what the server would', async (t) => {
  const req = buildRequest({ verdict: ['DROPPED'], ip: ['fd00::3'] });
  const p = compileFilters(req.whitelist);
  t.same([p(base), p(drop)], [false, true]);
});
