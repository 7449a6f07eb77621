// What the datapath maps should hold for a set of policies and endpoints: policy entries (by encoded
// key), ipcache prefixes and endpoint flags. Pure; the engine diffs it against the maps.
import type { Labels } from '../identity/labels.ts';
import { normalizeCidr } from '../net/index.ts';
import { RESERVED, reservedLabels } from '../identity/reserved.ts';
import type { CidrIdentities } from '../identity/cidr.ts';
import type { MapDiff } from '../identity/ipcache.ts';
import { ipcacheFrom, type IpcacheState } from './ipcache-delta.ts';
import {
  columnChanges,
  tablesGivenUp,
  PolicyCompiler,
  l4decode,
  type Column,
  type Entry,
  type LabelPolicy,
  type Universe,
} from './compile.ts';
import { matches } from './selector.ts';
import { encodePolicyKey, EP_FLAGS } from './map-codec.ts';
import { endpointFlags, selectionFor } from './selection.ts';
import { namesCidrs, type UniverseChange } from './peer-deps.ts';
import { prefixesFrom } from './prefixes.ts';
import { hiddenAddresses } from './hidden-addresses.ts';

export { prefixesOf } from './prefixes.ts';
import { RuleTally } from './rule-edits.ts';
import type { Policy, PolicyRecord } from './types.ts';
import type { L7Set } from './l7.ts';
import type { FqdnState } from '../fqdn/state.ts';
import type { FqdnSelector } from '../fqdn/selector.ts';

export interface EngineEndpoint {
  /** containerId/ifName */
  key: string;
  id: number;
  hostIfIndex: number;
  identity: number;
  ips: string[];
  audit: boolean;
  /** Egress default deny with no allow entries, audit off (native routing: the other nodes do not
   *  know its identity yet; cluster/mode.ts). */
  egressHeld?: boolean;
}

export interface DesiredInput {
  records: PolicyRecord[];
  endpoints: EngineEndpoint[];
  labelsOf: (identity: number) => Labels | undefined;
  hostAddresses: string[];
  /** Synced to the prefixes the records name (mutated: pass a copy when the result may be dropped). */
  cidrs: CidrIdentities;
  /** Where each kind of L7 proxy listens; L7 entries without one are refused (never opened). */
  proxyPorts?: Partial<Record<L7Set['kind'], number>>;
  /** Other nodes' endpoint addresses (cluster mode): prefix -> identity. */
  remote?: Map<string, number>;
  /** What DNS taught (toFQDNs): synced to the records' selectors and prefixes (mutated). */
  fqdn?: FqdnState;
}

/** One endpoint's policy entries (encoded key in hex -> entry). */
export interface EndpointEntries {
  id: number;
  entries: Map<string, Entry>;
  /** Built from `from` by setting or deleting only `keys` (of which `from` held those in `had`;
   *  `from`'s map is this one, edited in place): a diff against `from` looks at those alone
   *  (apply.ts). Dropped once applied, so no chain of old tables stays reachable. */
  delta?: { from: EndpointEntries; keys: Set<string>; had: Set<string> };
}

export interface Desired {
  /** By endpoint key. The same object as in the previous build when nothing about the endpoint's
   *  policy changed: the apply skips it (apply.ts). */
  policy: Map<string, EndpointEntries>;
  ipcache: Map<string, number>;
  /** What differs in `ipcache` from the one the previous build made (the maps hold that one unless
   *  its apply failed: then the engine drops the cache's ipcache and the next build is whole). */
  ipcacheDelta?: MapDiff<number>;
  /** host ifindex -> policy flag bits */
  flags: Map<number, number>;
  compiler: PolicyCompiler;
  /** The proxy ports the entries were built with (JSON). */
  ports?: string;
}

/** Every toFQDNs selector of the records. */
export function fqdnSelectorsOf(records: PolicyRecord[]): FqdnSelector[] {
  const out: FqdnSelector[] = [];
  for (const r of records) if (fqdnPeers.get(r.policy)[0]) out.push(...fqdnSelectorsOfPolicy(r.policy));
  return out;
}

/** How many toFQDNs peers each policy names (mostly none: then its rules are not walked again). */
const fqdnPeers = new RuleTally(1, (rule, into, by) => {
  if (rule.peers !== 'all') for (const p of rule.peers) if (p.kind === 'fqdn') into[0] += by;
});
const fqdnSelectorsByPolicy = new WeakMap<Policy, FqdnSelector[]>();
function fqdnSelectorsOfPolicy(policy: Policy): FqdnSelector[] {
  let out = fqdnSelectorsByPolicy.get(policy);
  if (out) return out;
  out = [];
  for (const s of policy.specs)
    for (const rule of s.rules) if (rule.peers !== 'all') for (const p of rule.peers) if (p.kind === 'fqdn') out.push(p.selector);
  fqdnSelectorsByPolicy.set(policy, out);
  return out;
}

/** The identities endpoint selectors choose from: those of live endpoints, plus init and health. */
export function universeOf(
  endpoints: { identity: number }[],
  labelsOf: (id: number) => Labels | undefined,
  cidrs: CidrIdentities,
  fqdn?: Universe['fqdn'],
): Universe {
  const ids = new Map<number, Labels>([
    [RESERVED.init, reservedLabels('init')],
    [RESERVED.health, reservedLabels('health')],
  ]);
  for (const ep of endpoints) {
    if (ids.has(ep.identity)) continue;
    const labels = labelsOf(ep.identity);
    if (labels) ids.set(ep.identity, labels);
  }
  return { identities: [...ids].map(([id, labels]) => ({ id, labels })), cidrs, ...(fqdn ? { fqdn } : {}) };
}

/** An L7 entry as the datapath holds it: allow, redirected to its proxy's port. Without a proxy
 *  (imports are refused then, but the agent may have been restarted without it) it fails closed. */
function withProxy(entry: Entry, ports: DesiredInput['proxyPorts']): Entry {
  const port = ports?.[entry.l7!.kind];
  return port ? { ...entry, proxyPort: port } : { action: 'deny', ruleId: entry.ruleId };
}

/** The L7 proxy kinds a set of policies needs. */
export function l7KindsOf(records: { policy: PolicyRecord['policy'] }[]): Set<L7Set['kind']> {
  const out = new Set<L7Set['kind']>();
  for (const r of records)
    for (const s of r.policy.specs) for (const rule of s.rules) for (const g of rule.l7 ?? []) out.add(g.dns ? 'dns' : 'http');
  return out;
}

/** A compiler and what it was built from: reused while records, peer identities and prefixes stay,
 *  derived (recompiling only what a change touches) while the peer identities stay; and the entries
 *  each endpoint got, reused while its compiled policy, id and proxy ports stay. */
export interface CompileCache {
  records: PolicyRecord[];
  identities: string;
  cidrVersion: number;
  fqdnVersion: number;
  compiler: PolicyCompiler;
  entries?: Map<string, { policy: LabelPolicy; ports: string; built: EndpointEntries }>;
  /** Endpoint flags without audit, by identity, for these records (an ADD must not ask every policy
   *  about every endpoint again). */
  selections?: Map<number, number>;
  /** The last build's ipcache (the next build edits it in place). */
  ipcache?: IpcacheState;
}

/** The label sets a change from `before` to `after` can touch: those a changed record's subject
 *  selects, and, when the CIDR or FQDN identities changed, those selected by records naming such peers. */
function touchedBy(before: PolicyRecord[], after: PolicyRecord[], cidrsChanged: boolean): (labels: Labels) => boolean {
  const was = new Set(before),
    is = new Set(after);
  const changed = [...before.filter((r) => !is.has(r)), ...after.filter((r) => !was.has(r))];
  if (cidrsChanged) changed.push(...after.filter(namesCidrs));
  const subjects = changed.flatMap((r) => r.policy.specs.map((s) => s.subject));
  return (labels) => subjects.some((s) => matches(s, labels));
}

/** What changed in the peer universe since `cur` was compiled; with the CIDR prefixes that came or
 *  went when one sync separates the two, and the FQDN identities that came or went since (then only
 *  the rules they can move resolve again). */
function movedSince(cur: CompileCache, input: DesiredInput, cidrVersion: number, fqdnVersion: number): UniverseChange {
  const moved: UniverseChange = { cidrs: cur.cidrVersion !== cidrVersion, fqdn: cur.fqdnVersion !== fqdnVersion };
  const last = input.cidrs.lastChange;
  if (moved.cidrs && last?.from === cur.cidrVersion && last.to === cidrVersion) moved.cidrChanges = last.cidrs;
  if (moved.cidrs && input.cidrs.hiddenSince(cur.cidrVersion)) moved.hostPrefixes = true;
  if (moved.fqdn) moved.fqdnChanges = input.fqdn?.identities.changesBetween(cur.fqdnVersion, fqdnVersion);
  return moved;
}

function compilerFor(input: DesiredInput, universe: Universe, cache?: { current?: CompileCache }): PolicyCompiler {
  const identities = universe.identities
    .map((i) => i.id)
    .sort((a, b) => a - b)
    .join(',');
  const cidrVersion = input.cidrs.version;
  const fqdnVersion = input.fqdn?.identities.version ?? 0;
  const cur = cache?.current;
  if (
    cur &&
    cur.records === input.records &&
    cur.identities === identities &&
    cur.cidrVersion === cidrVersion &&
    cur.fqdnVersion === fqdnVersion
  ) {
    return cur.compiler; // e.g. a new endpoint with an identity we know: no recompile
  }
  // "Any policy at all" closes the init identity (selection.ts): that flips with the first and last one.
  const derive = cur && cur.identities === identities && cur.records.length > 0 === input.records.length > 0;
  const compiler = derive
    ? cur.compiler.derive(
        input.records,
        universe,
        touchedBy(cur.records, input.records, cur.cidrVersion !== cidrVersion || cur.fqdnVersion !== fqdnVersion),
        movedSince(cur, input, cidrVersion, fqdnVersion),
      )
    : new PolicyCompiler(input.records, universe);
  if (cache) {
    const selections = cur?.records === input.records ? cur.selections : undefined;
    cache.current = { records: input.records, identities, cidrVersion, fqdnVersion, compiler, entries: cur?.entries, selections };
  }
  return compiler;
}

function entryKey(ep: EngineEndpoint, peer: number, direction: 'ingress' | 'egress', code: number): string {
  const { proto, dport } = l4decode(code);
  return encodePolicyKey({ endpointId: ep.id, peer, direction, proto, dport }).toString('hex');
}

function entriesOf(ep: EngineEndpoint, lp: LabelPolicy, ports: DesiredInput['proxyPorts']): EndpointEntries {
  const entries = new Map<string, Entry>();
  for (const direction of ['ingress', 'egress'] as const) {
    for (const [peer, col] of lp[direction].columns) {
      for (const [code, entry] of col)
        entries.set(entryKey(ep, peer, direction, code), entry.l7 ? withProxy(entry, ports) : entry);
    }
  }
  return { id: ep.id, entries };
}

/** The entries of `lp` from those built for `before` (same endpoint id and proxy ports): compiles
 *  share the columns that did not change (compile.ts), so only the others are encoded again. Takes
 *  over `before`'s entries and edits them in place (no copy of 10,000 entries per change): `before`
 *  is not looked at again once this is built (its table names only what the delta needs). */
function entriesFrom(
  before: { policy: LabelPolicy; built: EndpointEntries },
  ep: EngineEndpoint,
  lp: LabelPolicy,
  ports: DesiredInput['proxyPorts'],
): EndpointEntries {
  const entries = before.built.entries;
  const keys = new Set<string>(),
    had = new Set<string>();
  before.built.delta = undefined; // only one step back is ever diffed against
  const known = columnChanges(lp, before.policy);
  // A table another patch took over (an endpoint whose labels changed) cannot be diffed against.
  if (!known && tablesGivenUp(before.policy)) return entriesOf(ep, lp, ports);
  for (const direction of ['ingress', 'egress'] as const) {
    const is = lp[direction].columns;
    // Of a patched table only the rebuilt columns (its tables are the previous ones, edited: the
    // columns they held are in `known`); otherwise every column of both is compared.
    const was: Map<number, Column | undefined> = known ? known[direction] : before.policy[direction].columns;
    for (const [peer, col] of was) {
      if (!col || is.get(peer) === col) continue;
      for (const code of col.keys()) {
        const k = entryKey(ep, peer, direction, code);
        if (entries.delete(k)) had.add(k);
        keys.add(k);
      }
    }
    const news: Iterable<[number, Column | undefined]> = known
      ? [...known[direction].keys()].map((peer) => [peer, is.get(peer)] as [number, Column | undefined])
      : is;
    for (const [peer, col] of news) {
      if (!col || was.get(peer) === col) continue;
      for (const [code, entry] of col) {
        const k = entryKey(ep, peer, direction, code);
        if (entries.has(k) && !keys.has(k)) had.add(k);
        entries.set(k, entry.l7 ? withProxy(entry, ports) : entry);
        keys.add(k);
      }
    }
  }
  return { id: ep.id, entries, delta: { from: before.built, keys, had } };
}

export function buildDesired(input: DesiredInput, cache?: { current?: CompileCache }): Desired {
  const prefixes = prefixesFrom(input.records, cache?.current?.records);
  input.cidrs.hide(hiddenAddresses(input, prefixes.set));
  const cidrsBefore = input.cidrs.version;
  const cidrChange = { before: cidrsBefore, ...input.cidrs.sync(prefixes.set, prefixes.delta, prefixes.token) };
  const ipcachePrev = cache?.current?.ipcache;
  if (cache?.current) cache.current.ipcache = undefined; // taken over below (or stale)
  // The selectors and prefixes follow the records alone (the table holds exactly their prefixes once
  // synced): a sync with the same records (an endpoint's ADD or DEL) does not list, sort and compare
  // every prefix again.
  if (input.fqdn && input.fqdn.syncedTo !== input.records) {
    const selectors = fqdnSelectorsOf(input.records);
    // From the records it was given last: the prefixes that came and went (their delta is from there).
    const delta = prefixes.delta && input.fqdn.syncedTo === cache?.current?.records ? prefixes.delta : undefined;
    if (delta) input.fqdn.changePolicy(selectors, delta.added.map(normalizeCidr), delta.removed.map(normalizeCidr));
    else
      input.fqdn.setPolicy(selectors, [
        ...input.cidrs.entries().map((e) => e.text),
        ...input.cidrs.hiddenAmong(prefixes.set), // the policies name them all (the table skips the node's)
      ]);
    input.fqdn.syncedTo = input.records;
    // The policy's selectors changed which addresses DNS taught stand: hidden by what they were
    // before (above), by what they are now here.
    if (input.cidrs.hide(hiddenAddresses(input, prefixes.set))) {
      const again = input.cidrs.sync(prefixes.set, undefined, prefixes.token);
      cidrChange.added.push(...again.added);
      cidrChange.removed.push(...again.removed);
    }
  }
  // Peers selectors choose from: local endpoints, plus other nodes' endpoints in cluster mode.
  let peers: { identity: number }[] = input.endpoints;
  if (input.remote?.size) {
    const seen = new Set(input.endpoints.map((e) => e.identity));
    peers = [...input.endpoints];
    for (const id of input.remote.values())
      if (!seen.has(id)) {
        seen.add(id);
        peers.push({ identity: id });
      }
  }
  const universe = universeOf(peers, input.labelsOf, input.cidrs, input.fqdn?.identities);
  const compiler = compilerFor(input, universe, cache);
  const ports = JSON.stringify(input.proxyPorts ?? {});
  const prevEntries = cache?.current?.entries;
  const nextEntries: NonNullable<CompileCache['entries']> = new Map();
  const policy = new Map<string, EndpointEntries>();
  const flags = new Map<number, number>();
  const selections = cache?.current ? (cache.current.selections ??= new Map()) : new Map<number, number>();
  for (const ep of input.endpoints) {
    const part = endpointPart(ep, input, compiler, selections, prevEntries?.get(ep.key), ports);
    flags.set(ep.hostIfIndex, part.flags);
    nextEntries.set(ep.key, part.cached);
    policy.set(ep.key, part.cached.built);
  }
  if (cache?.current) cache.current.entries = nextEntries;
  const ipcache = ipcacheFrom(
    {
      endpoints: input.endpoints,
      hostAddresses: input.hostAddresses,
      cidrs: input.cidrs,
      remote: input.remote,
      fqdn: input.fqdn?.ipcacheEntries(),
    },
    ipcachePrev,
    cidrChange,
  );
  if (cache?.current) cache.current.ipcache = ipcache;
  return { policy, ipcache: ipcache.map, ipcacheDelta: ipcache.delta, flags, compiler, ports };
}

export type CachedEntries = NonNullable<CompileCache['entries']> extends Map<string, infer V> ? V : never;

/** One endpoint's flags and policy entries (reusing what was built for it while its compiled policy,
 *  id and proxy ports stay). */
export function endpointPart(
  ep: EngineEndpoint,
  input: Pick<DesiredInput, 'records' | 'labelsOf' | 'proxyPorts'>,
  compiler: PolicyCompiler,
  selections: Map<number, number>,
  prev: CachedEntries | undefined,
  ports: string,
): { flags: number; cached: CachedEntries } {
  const known = input.labelsOf(ep.identity);
  const labels = known ?? reservedLabels('init');
  let base = known ? selections.get(ep.identity) : undefined;
  if (base === undefined) {
    base = endpointFlags(selectionFor(input.records, labels), false);
    if (known) selections.set(ep.identity, base);
  }
  const lp = compiler.forLabels(labels);
  if (ep.egressHeld) {
    // Built apart (its own ports key), so the entries after the hold are built whole again.
    const built = entriesOf(ep, { ...lp, egress: { ...lp.egress, columns: new Map() } }, input.proxyPorts);
    const flags = base | EP_FLAGS.egressLookup | EP_FLAGS.egressDefaultDeny;
    return { flags, cached: { policy: lp, ports: `${ports}\0egress-held`, built } };
  }
  const reusable = prev && prev.ports === ports && prev.built.id === ep.id;
  const built = !reusable
    ? entriesOf(ep, lp, input.proxyPorts)
    : prev.policy === lp
      ? prev.built
      : entriesFrom(prev, ep, lp, input.proxyPorts);
  return { flags: ep.audit ? base | EP_FLAGS.audit : base, cached: { policy: lp, ports, built } };
}
