// One endpoint more or one fewer, derived from the last desired state instead of built over every
// endpoint (desired.ts builds it whole): when the endpoint's identity is one selectors already choose
// from before and after, the compiler and every other endpoint's entries and flags stay, so only its
// own entries, flags and addresses change. An ADD or a DEL then costs the same with 10 endpoints as
// with 1,000. Pure; undefined means "build everything".
import { RESERVED } from '../identity/reserved.ts';
import { normalizeCidr } from '../net/index.ts';
import { endpointPart, type CompileCache, type Desired, type DesiredInput, type EngineEndpoint } from './desired.ts';

/** The identities of each compile's universe, as a set (compilerFor keys them as text). */
const universeIds = new WeakMap<CompileCache, Set<number>>();

function idsOf(cur: CompileCache): Set<number> {
  let ids = universeIds.get(cur);
  if (!ids) universeIds.set(cur, (ids = new Set(cur.identities.split(',').map(Number))));
  return ids;
}

type Same = Pick<DesiredInput, 'records' | 'proxyPorts' | 'cidrs' | 'fqdn'>;

/** The compile `last` was built with still fits these inputs: same records, CIDR and FQDN
 *  identities, proxy ports (then also the same universe, which the callers check per identity). */
function sameCompile(last: Desired, input: Same, cache: { current?: CompileCache }): CompileCache | undefined {
  const cur = cache.current;
  if (
    !cur?.entries ||
    cur.compiler !== last.compiler ||
    cur.records !== input.records ||
    cur.cidrVersion !== input.cidrs.version ||
    cur.fqdnVersion !== (input.fqdn?.identities.version ?? 0) ||
    last.ports !== JSON.stringify(input.proxyPorts ?? {})
  )
    return undefined;
  return cur;
}

/** A policy names one of a new endpoint's addresses: the prefix's CIDR identity goes (desired.ts
 *  hiddenAddresses hides a named pod's address), which only a whole build does. */
function namedAddressAdded(ep: EngineEndpoint, cidrs: DesiredInput['cidrs']): boolean {
  return ep.ips.some((ip) => cidrs.idOf(normalizeCidr(ip)) !== undefined);
}

/** A policy names one of a deleted endpoint's addresses, which nothing else holds now (no other
 *  endpoint, node, pod on another node, or DNS answer): the prefix gets a CIDR identity back, which
 *  only a whole build gives. An address DNS taught stays hidden (hidden-addresses.ts: a named taught
 *  address), so the ipcache falls back to its FQDN identity (fallbackIdentity) and no rule moves. */
function namedAddressFreed(
  gone: EngineEndpoint,
  others: EngineEndpoint[],
  input: Pick<DesiredInput, 'cidrs' | 'hostAddresses' | 'remote' | 'fqdn'>,
): boolean {
  return gone.ips.some((ip) => {
    const prefix = normalizeCidr(ip);
    return (
      input.cidrs.hides(prefix) &&
      input.remote?.get(prefix) === undefined &&
      input.fqdn?.entryOf(prefix) === undefined &&
      !input.hostAddresses.some((h) => normalizeCidr(h) === prefix) &&
      !others.some((o) => o.ips.some((i) => normalizeCidr(i) === prefix))
    );
  });
}

/**
 * `last` (built for the same records) plus one new endpoint whose identity is already in the universe
 * selectors choose from (a replica of a pod the node has).
 */
export function desiredWithEndpoint(
  last: Desired,
  ep: EngineEndpoint,
  input: Same & Pick<DesiredInput, 'labelsOf'>,
  cache: { current?: CompileCache },
): Desired | undefined {
  const cur = sameCompile(last, input, cache);
  if (!cur || !input.labelsOf(ep.identity) || !idsOf(cur).has(ep.identity) || namedAddressAdded(ep, input.cidrs))
    return undefined;
  const ports = last.ports!;
  const part = endpointPart(ep, input, cur.compiler, (cur.selections ??= new Map()), cur.entries!.get(ep.key), ports);
  cur.entries!.set(ep.key, part.cached);
  const policy = new Map(last.policy).set(ep.key, part.cached.built);
  const flags = new Map(last.flags).set(ep.hostIfIndex, part.flags);
  const ipcache = new Map(last.ipcache);
  // Endpoint addresses override every other source (desiredIpcache). The maps hold `last` (a
  // failed apply drops it), so these are all that can differ: the apply diffs them alone.
  const upsert: [string, number][] = [];
  for (const ip of ep.ips) {
    const prefix = normalizeCidr(ip);
    ipcache.set(prefix, ep.identity);
    upsert.push([prefix, ep.identity]);
  }
  return { policy, ipcache, ipcacheDelta: { upsert, remove: [] }, flags, compiler: cur.compiler, ports };
}

/**
 * `last` without one deleted endpoint, when the universe stays: its identity was not in it, or
 * another endpoint here (or on another node) still has it. Its entries, flags and addresses go; an
 * address falls back to what the other sources say of it, in desiredIpcache's order.
 */
export function desiredWithoutEndpoint(
  last: Desired,
  gone: EngineEndpoint,
  rest: Iterable<EngineEndpoint>,
  input: Same & Pick<DesiredInput, 'hostAddresses' | 'remote'>,
  cache: { current?: CompileCache },
): Desired | undefined {
  const cur = sameCompile(last, input, cache);
  if (!cur) return undefined;
  const others = [...rest];
  if (namedAddressFreed(gone, others, input)) return undefined;
  // Another endpoint with the same host interface sets its flags (a full build knows which wins).
  if (others.some((o) => o.hostIfIndex === gone.hostIfIndex)) return undefined;
  const stays =
    !idsOf(cur).has(gone.identity) ||
    gone.identity === RESERVED.init ||
    gone.identity === RESERVED.health ||
    others.some((o) => o.identity === gone.identity) ||
    [...(input.remote?.values() ?? [])].includes(gone.identity);
  if (!stays) return undefined;
  cur.entries!.delete(gone.key);
  const policy = new Map(last.policy);
  policy.delete(gone.key);
  const flags = new Map(last.flags);
  flags.delete(gone.hostIfIndex);
  const ipcache = new Map(last.ipcache);
  const delta: { upsert: [string, number][]; remove: string[] } = { upsert: [], remove: [] };
  for (const ip of gone.ips) {
    const prefix = normalizeCidr(ip);
    const v = fallbackIdentity(prefix, others, input);
    if (v === undefined) {
      ipcache.delete(prefix);
      delta.remove.push(prefix);
    } else {
      ipcache.set(prefix, v);
      delta.upsert.push([prefix, v]);
    }
  }
  return { policy, ipcache, ipcacheDelta: delta, flags, compiler: cur.compiler, ports: last.ports };
}

/** What the ipcache holds for `prefix` without the deleted endpoint (desiredIpcache's precedence:
 *  endpoints, other nodes, host, DNS answers, policy CIDRs, world). */
function fallbackIdentity(
  prefix: string,
  others: EngineEndpoint[],
  input: Pick<DesiredInput, 'hostAddresses' | 'remote' | 'fqdn' | 'cidrs'>,
): number | undefined {
  let owner: number | undefined;
  for (const o of others) if (o.ips.some((ip) => normalizeCidr(ip) === prefix)) owner = o.identity;
  return (
    owner ??
    input.remote?.get(prefix) ??
    (input.hostAddresses.some((h) => normalizeCidr(h) === prefix) ? RESERVED.host : undefined) ??
    input.fqdn?.ipcacheEntries().get(prefix) ??
    input.cidrs.idOf(prefix) ??
    (prefix === '0.0.0.0/0' || prefix === '::/0' ? RESERVED.world : undefined)
  );
}
