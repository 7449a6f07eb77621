// Hubble's FlowFilter semantics on Membrane flows, and the filters Membrane refuses by name.
import t from 'tap';
import { compileFilters, FilterError } from '../src/flows/filter.ts';
import { parseSelector, requirementsMatch, parseLabels } from '../src/flows/selector.ts';
import type { Flow, FlowFilter } from '../src/flows/types.ts';

const base: Flow = {
  time: { seconds: 1, nanos: 0 },
  uuid: 'u-1',
  verdict: 'FORWARDED',
  IP: { source: '10.1.0.2', destination: '10.1.0.3', ipVersion: 'IPv4' },
  l4: { TCP: { sourcePort: 40000, destinationPort: 80, flags: { SYN: true, ACK: true } } },
  source: {
    ID: 1,
    identity: 257,
    labels: ['k8s:app=client', 'k8s:tier=front', 'k8s:replicas=3'],
    namespace: 'shop',
    podName: 'client-7d',
  },
  destination: { ID: 2, identity: 258, labels: ['docker:app=web'], namespace: 'default', podName: 'web-1' },
  nodeName: 'n1',
  eventType: { type: 5, subType: 0 },
  trafficDirection: 'INGRESS',
  isReply: { value: false },
  interface: { index: 7, name: 'mbr1' },
  membrane: { event: 'FLOW_NEW' },
  ingressAllowedBy: [{ name: 'allow-web', namespace: 'shop' }],
};
const drop: Flow = {
  ...base,
  uuid: 'u-2',
  verdict: 'DROPPED',
  eventType: { type: 1, subType: 133 },
  dropReason: 133,
  dropReasonDesc: 'POLICY_DENIED',
  ingressAllowedBy: undefined,
  l4: { UDP: { sourcePort: 5353, destinationPort: 53 } },
  IP: { source: 'fd00::2', destination: 'fd00::3', ipVersion: 'IPv6' },
  isReply: undefined,
  nodeName: 'prod/n2',
  membrane: { event: 'FLOW_DROP' },
  sourceNames: ['api.example.com'],
};
const m = (wl: FlowFilter[], bl: FlowFilter[] = [], ctx = {}) => {
  const p = compileFilters(wl, bl, ctx);
  return [p(base), p(drop)];
};

t.test('fields: AND inside a filter, OR over values and over whitelist filters, blacklist wins', async (t) => {
  t.same(m([]), [true, true]);
  t.same(m([{ verdict: ['DROPPED'] }]), [false, true]);
  t.same(m([{ verdict: ['DROPPED', 'FORWARDED'] }]), [true, true]);
  t.same(m([{ verdict: ['FORWARDED'], protocol: ['udp'] }]), [false, false]);
  t.same(m([{ verdict: ['FORWARDED'] }, { protocol: ['udp'] }]), [true, true]);
  t.same(m([], [{ eventType: [{ type: 1 }] }]), [true, false]);
  t.same(m([{ uuid: ['u-2'] }]), [false, true]);
  t.same(m([{ sourceIp: ['10.1.0.0/24'] }]), [true, false]);
  t.same(m([{ destinationIp: ['fd00::/64', '10.9.9.9'] }]), [false, true]);
  t.same(m([{ protocol: ['TCP'] }]), [true, false]);
  t.same(m([{ protocol: ['icmp', 'vrrp'] }]), [false, false], 'known protocols the datapath never reports match nothing');
  t.same(m([{ destinationPort: ['53', '79-81'] }]), [true, true]);
  t.same(m([{ sourcePort: ['40000'] }]), [true, false]);
  t.same(m([{ reply: [false] }]), [true, true], 'a drop with unknown direction counts as not a reply (as Hubble)');
  t.same(m([{ reply: [true] }]), [false, false]);
  t.same(m([{ sourceIdentity: [257] }, { membrane: { destinationEndpoint: [9] } }]), [true, true]);
  t.same(m([{ trafficDirection: ['EGRESS'] }]), [false, false]);
  t.same(m([{ dropReasonDesc: ['POLICY_DENIED'] }]), [false, true]);
  t.same(m([{ dropReasonDesc: [181] }]), [false, false], 'by number');
  t.same(m([{ ipVersion: ['IPv6'] }]), [false, true]);
  t.same(m([{ membrane: { policyName: ['allow-web'] } }]), [true, false]);
  t.same(m([{ membrane: { policyName: ['shop/allow-web'] } }]), [true, false]);
  t.same(m([{ membrane: { event: ['FLOW_DROP'] } }]), [false, true]);
  t.same(m([{ tcpFlags: [{ SYN: true }] }]), [true, false]);
  t.same(m([{ tcpFlags: [{ SYN: true, FIN: true }] }]), [false, false], 'every flag of one TCPFlags value');
  t.same(m([{ tcpFlags: [{ FIN: true }, { ACK: true }] }]), [true, false]);
  t.same(m([{ interface: [{ name: 'mbr1' }] }]), [true, true]);
  t.same(m([{ interface: [{ index: 8 }] }]), [false, false]);
  t.same(m([{ encrypted: [false] }]), [true, true]);
  t.same(m([{ encrypted: [true] }]), [false, false]);
  t.same(m([{ eventType: [{ type: 5 }] }]), [true, false]);
  t.same(m([{ eventType: [{ type: 1, matchSubType: true, subType: 133 }] }]), [false, true]);
  t.same(m([{ eventType: [{ type: 1, matchSubType: true, subType: 181 }] }]), [false, false]);
  t.same(m([{ sourceFqdn: ['*.example.com'] }]), [false, true]);
});

t.test('pods and namespaces, as Hubble reads them', async (t) => {
  t.same(m([{ sourcePod: ['shop/client'] }]), [true, true]);
  t.same(m([{ sourcePod: ['other/client'] }]), [false, false]);
  t.same(m([{ sourcePod: ['shop/'] }]), [true, true], 'a whole namespace');
  t.same(m([{ destinationPod: ['web'] }]), [true, true], 'no namespace means "default"');
  t.same(m([{ sourcePod: ['client'] }]), [false, false], 'client is not in "default"');
  t.same(m([{ sourcePod: ['/'] }]), [true, true], 'any namespace (hubble --all-namespaces)');
  t.throws(() => compileFilters([{ sourcePod: [''] }]), /source_pod: a pod name must not be empty/);
  const docker = compileFilters([{ destinationPod: ['web'] }]);
  t.ok(
    docker({ ...base, destination: { identity: 300, podName: 'web' } }),
    'a bare name also matches a Docker container (no namespace)',
  );
  t.notOk(
    compileFilters([{ destinationPod: ['default/web'] }])({ ...base, destination: { identity: 300, podName: 'web' } }),
    'but "default/web" names a pod in "default"',
  );
});

t.test('node names: patterns, cluster prefix, default cluster', async (t) => {
  t.same(m([{ nodeName: ['n*'] }]), [true, true]);
  t.same(m([{ nodeName: ['default/n1'] }]), [true, false]);
  t.same(m([{ nodeName: ['prod/'] }]), [false, true]);
  t.same(m([{ nodeName: ['n1'] }], [], { clusterName: 'prod' }), [true, false], 'an unprefixed node belongs to this cluster');
  t.throws(() => compileFilters([{ nodeName: ['a/b/c'] }]), /node_name: .*at most one/);
  t.throws(() => compileFilters([{ nodeName: ['nöde'] }]), /node_name: /);
});

t.test('label selectors: Kubernetes syntax, any source unless given', async (t) => {
  t.same(m([{ sourceLabel: ['app=client'] }]), [true, true]);
  t.same(m([{ sourceLabel: ['k8s:app=client'] }]), [true, true]);
  t.same(m([{ sourceLabel: ['docker:app=client'] }]), [false, false]);
  t.same(m([{ destinationLabel: ['app==web'] }]), [true, true]);
  t.same(m([{ sourceLabel: ['app=client,tier=back'] }]), [false, false]);
  t.same(m([{ sourceLabel: ['app=client,tier'] }]), [true, true]);
  t.same(m([{ sourceLabel: ['!tier'] }, { destinationLabel: ['!app'] }]), [false, false]);
  t.same(m([{ sourceLabel: ['app in (web, client)'] }]), [true, true]);
  t.same(m([{ sourceLabel: ['app notin (client)'] }]), [false, false]);
  t.same(m([{ sourceLabel: ['app!=client'] }]), [false, false]);
  t.same(m([{ sourceLabel: ['nope!=x'] }]), [true, true], '!= matches when the label is absent');
  t.same(m([{ sourceLabel: ['replicas>2'] }]), [true, true]);
  t.same(m([{ sourceLabel: ['replicas<2'] }]), [false, false]);
  t.same(m([{ sourceLabel: ['tier in (front),app in (client)'] }]), [true, true], 'commas inside parentheses do not split');
  t.same(
    parseSelector('any:app=x, !b').map((r) => [r.source, r.key, r.op]),
    [
      [null, 'app', 'eq'],
      [null, 'b', 'absent'],
    ],
  );
  t.ok(requirementsMatch(parseSelector('reserved:world'), parseLabels(['reserved:world'])));
  t.throws(() => compileFilters([{ sourceLabel: ['!a=b'] }]), /whitelist\[0\]\.source_label: .*not a label requirement/);
  t.throws(() => compileFilters([{ sourceLabel: ['a in (b'] }]), /unbalanced/);
});

t.test('L7 filters read the L7 record; HTTP ones need an L7-compatible event type', async (t) => {
  const http: Flow = {
    ...base,
    eventType: { type: 129 },
    l7: {
      type: 'REQUEST',
      http: { code: 404, method: 'GET', url: 'http://web/api/v1/items?x=1', headers: [{ key: 'x-a', value: '1' }] },
    },
  };
  const dns: Flow = { ...base, l7: { type: 'RESPONSE', dns: { query: 'api.example.com.' } } };
  const p = (f: FlowFilter) => {
    const c = compileFilters([f]);
    return [c(base), c(http), c(dns)];
  };
  t.same(p({ protocol: ['http'] }), [false, true, false]);
  t.same(p({ protocol: ['dns'] }), [false, false, true]);
  t.same(p({ httpStatusCode: ['4+'] }), [false, true, false]);
  t.same(p({ httpStatusCode: ['200'] }), [false, false, false]);
  t.same(p({ httpMethod: ['get'] }), [false, true, false]);
  t.same(p({ httpPath: ['^/api/v\\d+/'] }), [false, true, false]);
  t.same(p({ httpUrl: ['items'] }), [false, true, false]);
  t.same(p({ httpHeader: [{ key: 'x-a', value: '1' }] }), [false, true, false]);
  t.same(p({ dnsQuery: ['example\\.com'] }), [false, false, true]);
  t.same(p({ httpMethod: ['GET'], eventType: [{ type: 129 }] }), [false, true, false]);
  t.throws(
    () => compileFilters([{ httpMethod: ['GET'], eventType: [{ type: 1 }] }]),
    /http_method: needs the event type filter to select L7 events/,
  );
  t.throws(() => compileFilters([{ httpStatusCode: ['99'] }]), /http_status_code: "99"/);
  t.throws(() => compileFilters([{ httpPath: ['('] }]), /http_path: /);
});

t.test('bad filters are errors that name the field', async (t) => {
  t.throws(() => compileFilters([{ sourceIp: ['10.0.0.300'] }]), /whitelist\[0\]\.source_ip: "10.0.0.300"/);
  t.throws(() => compileFilters([], [{ destinationIp: ['10.0.0.0/33'] }]), /blacklist\[0\]\.destination_ip.*prefix/);
  t.throws(() => compileFilters([{ protocol: ['tcpx'] }]), /protocol: unknown protocol "tcpx"/);
  t.throws(() => compileFilters([{ sourcePort: ['80-70'] }]), /source_port: "80-70" is not a port/);
  t.throws(() => compileFilters([{ dropReasonDesc: ['NOPE'] }]), /drop_reason_desc: "NOPE"/);
  t.throws(() => compileFilters([{ sourceFqdn: ['a b'] }]), /source_fqdn: /);
});

t.test('filters Membrane cannot apply are refused by name, never ignored', async (t) => {
  const cases: [FlowFilter, RegExp][] = [
    [{ sourceService: ['default/web'] }, /whitelist\[0\]\.source_service: cannot be applied: Membrane has no service/],
    [{ destinationService: ['web'] }, /destination_service: cannot be applied/],
    [{ sourceWorkload: [{ name: 'web', kind: 'Deployment' }] }, /source_workload: cannot be applied/],
    [{ destinationWorkload: [{ name: 'web', kind: '' }] }, /destination_workload: cannot be applied/],
    [{ sourceIpXlated: ['10.0.0.1'] }, /source_ip_xlated: cannot be applied/],
    [{ nodeLabels: ['a=b'] }, /node_labels: cannot be applied/],
    [{ traceId: ['abc'] }, /trace_id: cannot be applied/],
    [{ ipTraceId: [5] }, /ip_trace_id: cannot be applied/],
    [{ experimental: { celExpression: ['true'] } }, /experimental\.cel_expression: CEL expressions are not supported/],
    [{ sourceClusterName: ['prod'] }, /source_cluster_name: this node is not in a cluster/],
  ];
  for (const [f, re] of cases) t.throws(() => compileFilters([f]), re, JSON.stringify(f));
  t.throws(() => compileFilters([], [{ destinationService: ['x'] }]), /blacklist\[0\]\.destination_service/);
  t.same(m([{ sourceClusterName: ['prod'] }], [], { clusterName: 'prod' }), [false, false], 'in a cluster the filter applies');
  t.ok(new FilterError('x') instanceof Error);
});
