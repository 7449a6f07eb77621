// The normalized policy model every accepted document (CiliumNetworkPolicy, Kubernetes NetworkPolicy)
// is turned into, and what the compiler, the trace and the API work on. Pure types.
import type { Selector } from './selector.ts';
import type { FqdnSelector } from '../fqdn/selector.ts';

export type Direction = 'ingress' | 'egress';
export type Action = 'allow' | 'deny';

export const ENTITIES = ['host', 'remote-node', 'world', 'all', 'init', 'health', 'unmanaged', 'cluster'] as const;
export type Entity = (typeof ENTITIES)[number];

export type Peer =
  | { kind: 'endpoints'; selector: Selector }
  | { kind: 'entity'; entity: Entity }
  | { kind: 'cidr'; cidr: string; except: string[] }
  /** `toFQDNs`: the addresses DNS answers through the proxy gave for matching names (fqdn/). */
  | { kind: 'fqdn'; selector: FqdnSelector };

export type L4Proto = 'TCP' | 'UDP' | 'SCTP' | 'ANY';

export type PortMatch =
  /** port 0 = every port of the protocol; endPort makes a range port..endPort. */
  | { proto: L4Proto; port: number; endPort?: number }
  /** ICMP/ICMPv6 message type; type undefined = every type of that family. */
  | { proto: 'ICMP' | 'ICMPv6'; type?: number };

/** HTTP rule of `toPorts[].rules.http` (Cilium's PortRuleHTTP). Regular expressions match the whole value. */
export interface HttpRule {
  method?: string;
  /** Matched against the request path with its query (dot segments resolved), e.g. "/public/.*". */
  path?: string;
  /** Matched against the Host header (or the authority of an absolute-form target). */
  host?: string;
  /** `headers: ["Name: value"]` (exact value) or `["Name"]` (present). */
  headers: { name: string; value?: string }[];
  headerMatches: HeaderMatch[];
}

export type MismatchAction = 'LOG' | 'ADD' | 'DELETE' | 'REPLACE';

/** Without `mismatch` the header must be present (with `value` when given) or the rule fails; with
 *  one the rule still matches and the action is applied to the request on a mismatch. */
export interface HeaderMatch {
  name: string;
  value?: string;
  mismatch?: MismatchAction;
}

/** `toPorts[].rules.dns` element: the names a pod may look up (matchName or matchPattern, either matches). */
export type DnsRule = FqdnSelector;

/** The L7 part of one toPorts element. */
export interface L7PortRule {
  /** The element's ports (they are in Rule.ports too: the L3/L4 view of a rule never loses them). */
  ports: PortMatch[];
  /** Alternatives: a request that matches one of them is allowed; [] allows every request. */
  http: HttpRule[];
  /** DNS rules instead of HTTP ones: queries go through the DNS proxy (a rule has one L7 kind). */
  dns?: DnsRule[];
  /** e.g. "spec.ingress[0].toPorts[1].rules.http" */
  path: string;
}

export interface Rule {
  direction: Direction;
  action: Action;
  /** Ordinal among the document's rules of this direction and action, across specs (rule ids use it). */
  index: number;
  /** Where it is in the document, e.g. "spec.ingress[2]", "specs[1].egressDeny[0]". */
  path: string;
  /** 'all' = any peer. An empty list selects nobody (a Cilium `ingress: [{}]` rule). */
  peers: Peer[] | 'all';
  /** Empty = every protocol and port. */
  ports: PortMatch[];
  /** toPorts elements with L7 rules: their ports are proxied and requests checked against them. */
  l7?: L7PortRule[];
}

export interface PolicySpec {
  subject: Selector;
  /** Default deny in this direction for the endpoints the spec selects. */
  defaultDeny: { ingress: boolean; egress: boolean };
  rules: Rule[];
}

export type PolicyKind = 'CiliumNetworkPolicy' | 'CiliumClusterwideNetworkPolicy' | 'NetworkPolicy';

export interface Policy {
  name: string;
  kind: PolicyKind;
  namespace?: string;
  description?: string;
  specs: PolicySpec[];
}

/** A stored policy: the normalized form, the document it came from, bookkeeping. */
export interface PolicyRecord {
  name: string;
  /** Bumped on every change of this policy; the repository revision is bumped on any change. */
  revision: number;
  /** Stable small number; rule ids are derived from it (see rule-id.ts). */
  number: number;
  policy: Policy;
  /** The document as the user wrote it (JSON form), for `policy get`. */
  source: unknown;
  updatedAt: string;
}
