// The compiled policy table of one direction (columns of entries by peer identity) and what makes
// its probe order deny-correct. Pure.
//
// The datapath keys entries by {endpoint, peer identity, direction, proto, dport} and probes, for a
// new flow, in this order (bpf/lib/policy.h; `probe` below is the same sequence):
//   (peer, proto, dport) (peer, proto, *) (peer, *, *) (any, proto, dport) (any, proto, *) (any, *, *)
// and takes the first entry it finds. Deny must win over allow wherever both match, so the table is
// closed over that order (see closeDenies): every entry a packet can stop at says "deny" whenever
// some deny rule matches that packet. Then six hash probes give the right answer, however many rules
// there are. A column's closure depends only on itself and the any-peer column, so a compile that
// changes a few columns closes only those (closeColumn).
import { ANY_IDENTITY } from '../identity/reserved.ts';
import type { L4Key } from './ports.ts';
import { unionL7, type L7Set } from './l7.ts';
import type { Action } from './types.ts';

export interface Entry {
  action: Action;
  ruleId: number;
  /** Allow through the L7 proxy, for requests its rules match (l7.ts). */
  l7?: L7Set;
  /** The proxy's port, written to the datapath with the entry (set when the desired maps are built). */
  proxyPort?: number;
}
/** l4code(proto, dport) -> entry, for one peer identity. */
export type Column = Map<number, Entry>;

export interface DirectionPolicy {
  /** Some policy selects the endpoint in this direction with default deny. */
  defaultDeny: boolean;
  /** peer identity (0 = any) -> column. Empty and !defaultDeny: no lookup needed. */
  columns: Map<number, Column>;
}

export const l4code = (proto: number, dport: number): number => proto * 0x10000 + dport;
export const l4decode = (code: number): L4Key => ({ proto: Math.floor(code / 0x10000), dport: code % 0x10000 });

/** Deny beats allow, plain allow beats L7 allow (rules are additive), L7 sets of the same traffic
 *  are unioned; among equals the lowest rule id wins, so output does not depend on order. */
export function merge(col: Column, code: number, e: Entry): void {
  const cur = col.get(code);
  col.set(code, cur ? combine(cur, e) : e);
}

function combine(cur: Entry, e: Entry): Entry {
  if (e.action !== cur.action) return e.action === 'deny' ? e : cur;
  if (e.action === 'allow' && !!e.l7 !== !!cur.l7) return e.l7 ? cur : e;
  // Two kinds of L7 rules for the same traffic (HTTP and DNS on one port): no proxy can enforce both.
  if (e.l7 && cur.l7 && e.l7.kind !== cur.l7.kind) return { action: 'deny', ruleId: Math.min(e.ruleId, cur.ruleId) };
  if (e.l7 && cur.l7) return { ...(e.ruleId < cur.ruleId ? e : cur), l7: unionL7(cur.l7, e.l7) };
  return e.ruleId < cur.ruleId ? e : cur;
}

/** The entries a packet (peer, proto, dport) may hit, in the datapath's probe order. */
export function probeOrder(peer: number, proto: number, dport: number): [number, number][] {
  const out: [number, number][] = [];
  const peers = peer === ANY_IDENTITY ? [ANY_IDENTITY] : [peer, ANY_IDENTITY];
  for (const p of peers) {
    if (dport) out.push([p, l4code(proto, dport)]);
    if (proto) out.push([p, l4code(proto, 0)]);
    out.push([p, 0]);
  }
  return out;
}

/** What the datapath finds for a new flow: the first entry in probe order, if any. */
export function probe(
  dp: DirectionPolicy,
  peer: number,
  proto: number,
  dport: number,
): { peer: number; code: number; entry: Entry } | undefined {
  for (const [p, code] of probeOrder(peer, proto, dport)) {
    const entry = dp.columns.get(p)?.get(code);
    if (entry) return { peer: p, code, entry };
  }
  return undefined;
}

/** Generalizations of (proto, dport) within a column, most specific first, excluding itself. */
function wider(code: number): number[] {
  const { proto, dport } = l4decode(code);
  const out: number[] = [];
  if (dport) out.push(l4code(proto, 0));
  if (proto) out.push(0);
  return out;
}

/** The entries that also match whatever stops at (peer, code): wider ports, then the any-peer column. */
function generalizations(dp: DirectionPolicy, peer: number, code: number): Entry[] {
  const out: Entry[] = [];
  const col = dp.columns.get(peer);
  const any = dp.columns.get(ANY_IDENTITY);
  for (const w of wider(code)) {
    const e = col?.get(w);
    if (e) out.push(e);
  }
  if (peer !== ANY_IDENTITY && any)
    for (const c of [code, ...wider(code)]) {
      const e = any.get(c);
      if (e) out.push(e);
    }
  return out;
}

/** After closeDenies: each L7 entry takes in the allow entries that also cover its traffic (l7.ts).
 *  The any-peer column first, so that the result does not depend on the columns' order. */
export function closeL7(dp: DirectionPolicy): void {
  const any = dp.columns.get(ANY_IDENTITY);
  if (any) closeL7Column(dp, ANY_IDENTITY, any);
  for (const [peer, col] of dp.columns) if (peer !== ANY_IDENTITY) closeL7Column(dp, peer, col);
}

export function closeL7Column(dp: DirectionPolicy, peer: number, col: Column): void {
  for (const [code, e] of col) {
    if (e.action !== 'allow' || !e.l7) continue;
    let cur = e;
    for (const g of generalizations(dp, peer, code)) {
      if (g.action !== 'allow') continue;
      cur = combine(cur, g);
      if (!cur.l7) break;
    }
    if (cur !== e) col.set(code, cur);
  }
}

/**
 * Make the probe order deny-correct:
 *  1. an allow entry becomes deny when a deny exists at one of its generalizations (same peer with
 *     wider ports, or the any-peer column at the same or wider ports);
 *  2. an any-peer deny (proto, dport) is copied into each peer column whose wider allow entry would
 *     otherwise stop the probe before reaching it.
 * The any-peer column first: the others are closed against it.
 */
export function closeDenies(dp: DirectionPolicy): void {
  const any = dp.columns.get(ANY_IDENTITY);
  if (any) closeColumn(dp, ANY_IDENTITY, any);
  for (const [peer, col] of dp.columns) if (peer !== ANY_IDENTITY) closeColumn(dp, peer, col);
}

/** closeDenies for one column, the any-peer column being closed already (or this one). */
export function closeColumn(dp: DirectionPolicy, peer: number, col: Column): void {
  const any = dp.columns.get(ANY_IDENTITY);
  const denyAt = (c: Column | undefined, code: number) => {
    const e = c?.get(code);
    return e?.action === 'deny' ? e : undefined;
  };
  for (const [code, e] of col) {
    if (e.action === 'deny') continue;
    const gens: [Column | undefined, number][] = wider(code).map((c) => [col, c]);
    if (peer !== ANY_IDENTITY) gens.push([any, code], ...wider(code).map((c): [Column | undefined, number] => [any, c]));
    for (const [gc, gcode] of gens) {
      const d = denyAt(gc, gcode);
      if (d) {
        col.set(code, d);
        break;
      }
    }
  }
  if (!any || peer === ANY_IDENTITY) return;
  for (const [code, d] of any) {
    if (d.action !== 'deny' || code === 0 || col.has(code)) continue;
    const shadowed = wider(code).some((w) => col.get(w)?.action === 'allow');
    if (shadowed) col.set(code, d);
  }
}
