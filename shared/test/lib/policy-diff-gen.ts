// Random policy documents and edits for the differential test of the incremental sync
// (policy-differential.test.ts). Small value ranges on purpose: rules of different policies and of
// one policy keep landing on the same map keys (one allow among several for a key, an allow and a
// deny for one key), which is where an incremental path can drop or keep the wrong entry.
import type { Rnd } from './seeded.ts';

export const APPS = ['web', 'db', 'client', 'other'];
export const LISTS = ['ingress', 'ingressDeny', 'egress', 'egressDeny'] as const;
export type List = (typeof LISTS)[number];

export interface Spec {
  endpointSelector: object;
  ingress?: object[];
  ingressDeny?: object[];
  egress?: object[];
  egressDeny?: object[];
}
export interface Doc {
  name: string;
  specs: Spec[];
}

const pick = <T>(rnd: Rnd, xs: readonly T[]): T => xs[rnd(xs.length)];

function ports(rnd: Rnd, proto = 'TCP'): object[] | undefined {
  const k = rnd(4);
  if (k === 0) return undefined; // every port
  const port = pick(rnd, ['80', '443', '53', '8080']);
  if (k === 3) return [{ ports: [{ port, protocol: 'ANY' }] }];
  return [{ ports: [{ port, protocol: port === '53' ? 'UDP' : proto }] }];
}

const selector = (rnd: Rnd) => (rnd(6) === 0 ? {} : { matchLabels: { app: pick(rnd, APPS) } });
const cidr = (rnd: Rnd) => pick(rnd, ['198.18.0.1/32', '198.18.0.2/32', '198.18.0.0/24', '198.18.0.0/16', '10.0.0.3/32']);

/** One rule element of `list` (from* for ingress lists, to* for egress ones). */
export function randomRule(rnd: Rnd, list: List): object {
  const dir = list.startsWith('ingress') ? 'from' : 'to';
  const deny = list.endsWith('Deny');
  const withPorts = (r: object) => {
    const p = ports(rnd);
    return p ? { ...r, toPorts: p } : r;
  };
  const k = rnd(deny ? 5 : 8);
  switch (k) {
    case 0:
    case 1:
      return withPorts({ [`${dir}Endpoints`]: [selector(rnd)] });
    case 2:
      return withPorts({ [`${dir}CIDR`]: [cidr(rnd)] });
    case 3:
      return withPorts({
        [`${dir}CIDRSet`]: [{ cidr: '198.18.0.0/16', except: [pick(rnd, ['198.18.0.0/24', '198.18.0.2/32'])] }],
      });
    case 4:
      return withPorts({ [`${dir}Entities`]: [pick(rnd, ['world', 'cluster', 'host', 'all'])] });
    case 5:
      if (dir === 'to') return withPorts({ toFQDNs: [{ matchName: pick(rnd, ['api.example.com', 'db.example.com']) }] });
      return withPorts({ fromEndpoints: [selector(rnd)] });
    case 6:
      // An L7 rule: a proxy-redirect entry in the map.
      return dir === 'from'
        ? {
            fromEndpoints: [selector(rnd)],
            toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }], rules: { http: [{ method: 'GET', path: `/v${rnd(2)}` }] } }],
          }
        : {
            toEndpoints: [selector(rnd)],
            toPorts: [{ ports: [{ port: '53', protocol: 'UDP' }], rules: { dns: [{ matchPattern: '*.example.com' }] } }],
          };
    default:
      return {};
  }
}

export function randomSpec(rnd: Rnd): Spec {
  const spec: Spec = { endpointSelector: selector(rnd) };
  for (const list of LISTS) {
    if (rnd(4) === 0) continue;
    spec[list] = Array.from({ length: 1 + rnd(4) }, () => randomRule(rnd, list));
  }
  if (!LISTS.some((l) => spec[l])) spec.ingress = [randomRule(rnd, 'ingress')];
  return spec;
}

export const randomDoc = (rnd: Rnd, name: string): Doc => ({
  name,
  specs: Array.from({ length: rnd(5) === 0 ? 2 : 1 }, () => randomSpec(rnd)),
});

const clone = (d: Doc): Doc => JSON.parse(JSON.stringify(d));

/** An edit of `doc` (a copy), and what it did. Mostly one or two rules replaced in place (the path
 *  that finds changed rules by object identity), sometimes a copy of another rule, an allow turned
 *  into a deny of the same peers and ports, a rule added or removed, or a new subject. */
export function editDoc(rnd: Rnd, doc: Doc): { doc: Doc; what: string } {
  const d = clone(doc);
  const spec = pick(rnd, d.specs);
  const present = LISTS.filter((l) => spec[l]?.length);
  const k = rnd(20);
  if (k === 0 || !present.length) {
    spec.endpointSelector = selector(rnd);
    return { doc: d, what: 'subject' };
  }
  const list = pick(rnd, present);
  const rules = spec[list]!;
  const i = rnd(rules.length);
  if (k === 1) {
    rules.push(randomRule(rnd, list));
    return { doc: d, what: `add ${list}` };
  }
  if (k === 2 && rules.length > 1) {
    rules.splice(i, 1);
    return { doc: d, what: `remove ${list}[${i}]` };
  }
  if (k === 3) {
    // allow <-> deny: the same element moved to the other list's place i (in place when it has one).
    const other = (list.endsWith('Deny') ? list.slice(0, -4) : `${list}Deny`) as List;
    const moved = rules[i] as { toPorts?: { rules?: unknown }[] };
    if (!moved.toPorts?.some((p) => p.rules)) {
      const to = (spec[other] ??= []);
      if (to.length) to[rnd(to.length)] = moved;
      else to.push(moved);
      return { doc: d, what: `swap ${list}[${i}] -> ${other}` };
    }
  }
  if (k === 4) {
    rules[i] = rules[rnd(rules.length)];
    return { doc: d, what: `copy in ${list}` };
  }
  const n = 1 + rnd(2);
  for (let j = 0; j < n; j++) rules[rnd(rules.length)] = randomRule(rnd, list);
  return { doc: d, what: `change ${n} of ${list}` };
}

/** The document's text as an API client sends it (compact JSON). */
export function docText(d: Doc): string {
  const base = { apiVersion: 'cilium.io/v2', kind: 'CiliumNetworkPolicy', metadata: { name: d.name } };
  return JSON.stringify(d.specs.length === 1 ? { ...base, spec: d.specs[0] } : { ...base, specs: d.specs });
}
