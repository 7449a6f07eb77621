// Applying a desired state to the datapath maps as a diff, in an order that never opens a hole, and
// undoing what was done when a step fails (no partial state).
//   1. policy upserts         (entries exist before anything can select them)
//   2. endpoint flags         (enforcement switches on once its allow entries are in)
//   3. ipcache upserts        (addresses take identities whose entries are already there)
//   4. ipcache removals
//   5. policy removals        (nothing classifies traffic with a removed identity any more)
// Then established flows are held to the new state: the ops revoke those it no longer admits.
import { diffMaps, type MapDiff } from '../identity/ipcache.ts';
import type { Entry } from './compile.ts';
import type { EndpointEntries } from './desired.ts';
import { MembraneError } from '../errors.ts';

/** What the engine needs from the maps. Implemented over the pinned maps (datapath-ops.ts) and by fakes. */
export interface PolicyDatapathOps {
  readonly policyCapacity: number;
  readonly ipcacheCapacity: number;
  readPolicy(): Map<string, Entry>;
  /** Batched where the kernel allows it. Keys are encoded policy keys in hex. */
  writePolicy(upsert: [string, Entry][], remove: string[]): void;
  readIpcache(): Map<string, number>;
  writeIpcache(upsert: [string, number][], remove: string[]): void;
  /** Policy bits of an endpoint's config; undefined when the endpoint has no config. */
  readEndpointFlags(hostIfindex: number): number | undefined;
  /** Sets the policy bits, keeping the others; a missing endpoint config is not an error. */
  writeEndpointFlags(hostIfindex: number, flags: number): void;
  /** The maps changed (mirror = their content now): established flows the change denies must stop. */
  changed?(mirror: Mirror, what: MapChanges): void;
}

/** What one apply wrote: the flows that can have been affected are those of these endpoints (policy
 *  keys, flags) and those with an address in these prefixes. */
export interface MapChanges {
  policyKeys: string[];
  flagIfindexes: number[];
  ipcachePrefixes: string[];
}

export interface Mirror {
  policy: Map<string, Entry>;
  ipcache: Map<string, number>;
  flags: Map<number, number>;
}

export interface ApplyStats {
  policyUpserts: number;
  policyRemovals: number;
  ipcacheUpserts: number;
  ipcacheRemovals: number;
  flagChanges: number;
}

/** The policies need more map entries than the pinned maps hold: the import is refused as too big. */
export class CapacityError extends MembraneError<'bad_request'> {
  override readonly name = 'CapacityError';
  constructor(message: string) {
    super('bad_request', message);
  }
}

/** What the datapath stores of an entry (the L7 rules themselves live in the proxy). */
const sameEntry = (a: Entry, b: Entry) =>
  a.action === b.action && a.ruleId === b.ruleId && (a.proxyPort ?? 0) === (b.proxyPort ?? 0);

/** What the maps should hold: policy entries by endpoint (desired.ts), ipcache, flags. */
export interface DesiredMaps {
  policy: Map<string, EndpointEntries>;
  ipcache: Map<string, number>;
  /** The entries of `ipcache` that can differ from the maps (none: compare all of them). */
  ipcacheDelta?: MapDiff<number>;
  flags: Map<number, number>;
}

/**
 * The policy map difference. With `applied` (the entries the previous successful apply wrote, by
 * endpoint) only endpoints whose entries object changed are looked at, and of an endpoint whose
 * entries were derived from the applied ones (a delta) only the keys that changed, so the work
 * follows the change, not the total; without it (first sync, after a failure) the whole mirror is
 * compared.
 */
function policyDiff(
  mirror: Map<string, Entry>,
  desired: DesiredMaps['policy'],
  applied?: DesiredMaps['policy'],
): { upsert: [string, Entry][]; remove: string[] } {
  if (!applied) {
    const flat = new Map<string, Entry>();
    for (const e of desired.values()) for (const [k, v] of e.entries) flat.set(k, v);
    return diffMaps(mirror, flat, sameEntry);
  }
  const upsert: [string, Entry][] = [];
  const gone: { id: number; key: string }[] = [];
  for (const [ep, e] of desired) {
    const prev = applied.get(ep);
    if (prev === e) continue;
    if (prev && e.delta?.from === prev) {
      // Every other key holds the same entry as in `prev`, which the maps hold since it was applied
      // (`prev`'s map is this one now: what it held is in `had`).
      for (const k of e.delta.keys) {
        const v = e.entries.get(k);
        if (v === undefined) {
          if (e.delta.had.has(k)) gone.push({ id: prev.id, key: k });
          continue;
        }
        const cur = mirror.get(k);
        if (!cur || !sameEntry(cur, v)) upsert.push([k, v]);
      }
      continue;
    }
    for (const [k, v] of e.entries) {
      const cur = mirror.get(k);
      if (!cur || !sameEntry(cur, v)) upsert.push([k, v]);
    }
    if (prev) for (const k of prev.entries.keys()) if (!e.entries.has(k)) gone.push({ id: prev.id, key: k });
  }
  for (const [ep, prev] of applied) if (!desired.has(ep)) for (const k of prev.entries.keys()) gone.push({ id: prev.id, key: k });
  // Keys carry the endpoint id: one a new endpoint reuses may be wanted again under another key.
  const byId = new Map([...desired.values()].map((e) => [e.id, e.entries]));
  const remove = gone.filter((g) => mirror.has(g.key) && !byId.get(g.id)?.has(g.key)).map((g) => g.key);
  return { upsert, remove: [...new Set(remove)] };
}

/** Applies `desired` over `mirror` (which it updates on success only); `applied`: see policyDiff. */
export function applyDesired(
  ops: PolicyDatapathOps,
  mirror: Mirror,
  desired: DesiredMaps,
  applied?: DesiredMaps['policy'],
): ApplyStats {
  let entries = 0;
  for (const e of desired.policy.values()) entries += e.entries.size;
  if (entries > ops.policyCapacity) {
    throw new CapacityError(
      `the policies need ${entries} policy map entries; the map holds ${ops.policyCapacity} (fewer rules, peers or port ranges, or fewer selected endpoints)`,
    );
  }
  if (desired.ipcache.size > ops.ipcacheCapacity) {
    throw new CapacityError(
      `the policies and endpoints need ${desired.ipcache.size} ipcache prefixes; the ipcache holds ${ops.ipcacheCapacity}`,
    );
  }
  const pol = policyDiff(mirror.policy, desired.policy, applied);
  const ipc = desired.ipcacheDelta
    ? againstMirror(mirror.ipcache, desired.ipcacheDelta)
    : diffMaps(mirror.ipcache, desired.ipcache);
  // An endpoint without a config (being torn down, or not written yet) has no flags to set.
  const flagChanges = [...desired.flags].filter(([ifindex, f]) => {
    const cur = currentFlags(ops, mirror, ifindex);
    return cur !== undefined && cur !== f;
  });

  const undo: (() => void)[] = [];
  const restorePolicy = (keys: string[]) => () =>
    ops.writePolicy(
      keys.filter((k) => mirror.policy.has(k)).map((k) => [k, mirror.policy.get(k)!]),
      keys.filter((k) => !mirror.policy.has(k)),
    );
  const restoreIpcache = (keys: string[]) => () =>
    ops.writeIpcache(
      keys.filter((k) => mirror.ipcache.has(k)).map((k) => [k, mirror.ipcache.get(k)!]),
      keys.filter((k) => !mirror.ipcache.has(k)),
    );
  try {
    if (pol.upsert.length) {
      undo.push(restorePolicy(pol.upsert.map(([k]) => k)));
      ops.writePolicy(pol.upsert, []);
    }
    for (const [ifindex, f] of flagChanges) {
      const before = mirror.flags.get(ifindex) ?? 0;
      undo.push(() => ops.writeEndpointFlags(ifindex, before));
      ops.writeEndpointFlags(ifindex, f);
    }
    if (ipc.upsert.length) {
      undo.push(restoreIpcache(ipc.upsert.map(([k]) => k)));
      ops.writeIpcache(ipc.upsert, []);
    }
    if (ipc.remove.length) {
      undo.push(restoreIpcache(ipc.remove));
      ops.writeIpcache([], ipc.remove);
    }
    if (pol.remove.length) {
      undo.push(restorePolicy(pol.remove));
      ops.writePolicy([], pol.remove);
    }
  } catch (e) {
    for (const step of undo.reverse()) {
      try {
        step();
      } catch {
        /* best effort: the next sync diffs against a re-read of the maps */
      }
    }
    throw e;
  }
  for (const [k, v] of pol.upsert) mirror.policy.set(k, v);
  for (const k of pol.remove) mirror.policy.delete(k);
  for (const [k, v] of ipc.upsert) mirror.ipcache.set(k, v);
  for (const k of ipc.remove) mirror.ipcache.delete(k);
  for (const [ifindex, f] of flagChanges) mirror.flags.set(ifindex, f);
  for (const e of desired.policy.values()) e.delta = undefined; // applied: the next diff starts here
  if (pol.upsert.length || pol.remove.length || ipc.upsert.length || ipc.remove.length || flagChanges.length) {
    ops.changed?.(mirror, {
      policyKeys: [...pol.upsert.map(([k]) => k), ...pol.remove],
      flagIfindexes: flagChanges.map(([i]) => i),
      ipcachePrefixes: [...ipc.upsert.map(([k]) => k), ...ipc.remove],
    });
  }
  return {
    policyUpserts: pol.upsert.length,
    policyRemovals: pol.remove.length,
    ipcacheUpserts: ipc.upsert.length,
    ipcacheRemovals: ipc.remove.length,
    flagChanges: flagChanges.length,
  };
}

function currentFlags(ops: PolicyDatapathOps, mirror: Mirror, ifindex: number): number | undefined {
  if (!mirror.flags.has(ifindex)) {
    const f = ops.readEndpointFlags(ifindex);
    if (f === undefined) return undefined;
    mirror.flags.set(ifindex, f);
  }
  return mirror.flags.get(ifindex);
}

/** Of a delta, what the maps do not hold yet. */
function againstMirror(mirror: Map<string, number>, delta: MapDiff<number>): MapDiff<number> {
  return {
    upsert: delta.upsert.filter(([k, v]) => mirror.get(k) !== v),
    remove: delta.remove.filter((k) => mirror.has(k)),
  };
}
