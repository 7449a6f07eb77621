// Policy documents for the parser's tests: a CiliumNetworkPolicy that uses most of what we accept,
// and the fuzzer's generators (a seeded rng, random values over the fields we know, text and tree
// mutations; the caller seeds the rng, so every run sees the same documents).
import { FIELDS as POLICY_FIELDS } from '../../src/policy/fields.ts';

export const CNP = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web
  namespace: shop
spec:
  endpointSelector:
    matchLabels:
      app: web
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
      - port: 8000
        endPort: 8010
  - icmps:
    - fields:
      - type: EchoRequest
        family: IPv4
      - type: 128
        family: IPv6
  egressDeny:
  - toCIDRSet:
    - cidr: 198.18.0.0/15
      except: [198.18.5.0/24]
  egress:
  - toEntities: [world]
`;

// Every field the parser knows, and names that would reach Object.prototype if they were used as keys.
const FIELDS = [...POLICY_FIELDS, '__proto__', 'constructor', 'toString'];
const SCALARS: unknown[] = [
  null,
  true,
  false,
  0,
  -1,
  80,
  65536,
  1e308,
  NaN,
  '',
  'TCP',
  'ANY',
  'In',
  '80',
  'http',
  'world',
  'all',
  '198.18.0.0/15',
  '::/0',
  '10.0.0.1/33',
  'cilium.io/v2',
  'networking.k8s.io/v1',
  'CiliumNetworkPolicy',
  'NetworkPolicy',
  'List',
  'x'.repeat(300),
  '\u0000',
  '{{',
  'EchoRequest',
];

export function randomValue(r: (n: number) => number, depth: number): unknown {
  const k = r(depth > 4 ? 2 : 5);
  if (k < 2) return SCALARS[r(SCALARS.length)];
  if (k === 2) return Array.from({ length: r(4) }, () => randomValue(r, depth + 1));
  const o: Record<string, unknown> = {};
  for (let i = r(5); i > 0; i--) o[FIELDS[r(FIELDS.length)]] = randomValue(r, depth + 1);
  return o;
}

export function mutate(text: string, r: (n: number) => number): string {
  const chars = [...text];
  for (let i = r(6); i >= 0; i--) {
    const at = r(chars.length + 1);
    const op = r(4);
    if (op === 0) chars.splice(at, 1);
    else if (op === 1) chars.splice(at, 0, ' :-[]{}"\'\n\t#&*!|>%@`'[r(20)]);
    else if (op === 2) chars.splice(at, r(20));
    else chars.splice(at, 0, ...chars.slice(r(chars.length), r(chars.length)));
  }
  return chars.join('');
}

/** Replace, drop or retype a few values of a valid document: mostly still-valid, sometimes subtly not. */
export function mutateTree(doc: unknown, r: (n: number) => number): unknown {
  const copy = JSON.parse(JSON.stringify(doc));
  const visit = (node: unknown, depth: number): void => {
    if (!node || typeof node !== 'object') return;
    const keys = Object.keys(node);
    for (const k of keys) {
      const o = node as Record<string, unknown>;
      const roll = r(40);
      if (roll === 0) delete o[k];
      else if (roll === 1) o[k] = SCALARS[r(SCALARS.length)];
      else if (roll === 2 && Array.isArray(o[k])) (o[k] as unknown[]).push(randomValue(r, depth + 2));
      else visit(o[k], depth + 1);
    }
  };
  visit(copy, 0);
  return copy;
}
