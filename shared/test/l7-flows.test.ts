// Proxy records as Hubble L7 flows: direction and reply, URL, latency, the policies that decided.
import t from 'tap';
import { l7Flow } from '../src/l7/flows.ts';
import type { L7Record } from '../src/l7/proxy/records.ts';
import type { FlowContext } from '../src/flows/flow.ts';

const ctx: FlowContext = {
  nodeName: 'node-1',
  wallOffset: { seconds: 0, nanos: 0 },
  endpointById: (id) =>
    id === 7
      ? { id: 7, identity: 300, labels: { app: 'web' }, containerId: 'c7', podName: 'web-0', namespace: 'shop' }
      : undefined,
  endpointByAddress: () => undefined,
  labelsOfIdentity: (id) => (id === 2 ? { 'reserved:world': '' } : undefined),
  describeRule: (id) =>
    id === 0x10000 ? { policy: 'shop/api', namespace: 'shop', index: 0, direction: 'ingress', action: 'allow' } : undefined,
};
const base: L7Record = {
  kind: 'request',
  timeMs: 1_700_000_000_123.5,
  src: { ip: '198.18.0.7', port: 40000, identity: 2 },
  dst: { ip: '10.0.0.2', port: 8080, identity: 300, endpoint: 7 },
  method: 'GET',
  path: '/public/a?x=1',
  host: 'api.shop',
  protocol: 'HTTP/1.1',
  status: 0,
  latencyNs: 0,
  verdict: 'forwarded',
  sides: [
    { direction: 'ingress', endpoint: 7, allowed: true, ruleId: 0x10000, httpRule: 'spec.ingress[0].toPorts[0].rules.http[2]' },
  ],
};

t.test('a request from the world to a pod', async (t) => {
  const f = l7Flow(base, ctx);
  t.match(f, {
    time: { seconds: 1_700_000_000, nanos: 123_500_000 },
    verdict: 'FORWARDED',
    Type: 'L7',
    eventType: { type: 129 },
    trafficDirection: 'INGRESS',
    IP: { source: '198.18.0.7', destination: '10.0.0.2', ipVersion: 'IPv4' },
    l4: { TCP: { sourcePort: 40000, destinationPort: 8080 } },
    source: { identity: 2, labels: ['reserved:world'] },
    destination: { ID: 7, identity: 300, podName: 'web-0', namespace: 'shop' },
    l7: { type: 'REQUEST', http: { method: 'GET', url: 'http://api.shop/public/a?x=1', protocol: 'HTTP/1.1' } },
    ingressAllowedBy: [{ name: 'api', namespace: 'shop', membraneRulePath: 'spec.ingress[0].toPorts[0].rules.http[2]' }],
    Summary: 'HTTP/1.1 GET http://api.shop/public/a?x=1',
    isReply: {},
  });
  t.notOk(f.l7?.http?.code, 'no status on a request');
});

t.test('a denied response goes back from server to client', async (t) => {
  const f = l7Flow(
    {
      ...base,
      kind: 'response',
      status: 403,
      latencyNs: 2_000_000,
      verdict: 'denied',
      reason: 'denied',
      host: '',
      sides: [{ direction: 'ingress', endpoint: 7, allowed: false, ruleId: 0x10000 }],
    },
    ctx,
  );
  t.match(f, {
    verdict: 'DROPPED',
    isReply: { value: true },
    IP: { source: '10.0.0.2', destination: '198.18.0.7' },
    l4: { TCP: { sourcePort: 8080, destinationPort: 40000 } },
    source: { ID: 7 },
    l7: { type: 'RESPONSE', latencyNs: 2_000_000, http: { code: 403, url: 'http://10.0.0.2:8080/public/a?x=1' } },
    ingressDeniedBy: [{ name: 'api' }],
    Summary: 'HTTP/1.1 403 2ms (GET http://10.0.0.2:8080/public/a?x=1); denied by ingress HTTP rules of shop/api',
  });
});
