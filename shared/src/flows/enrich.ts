// What a flow needs beyond the event's own bytes, looked up when the event arrives (the endpoint may
// be gone by the time someone asks): the endpoint records on both ends, the observing interface's
// name, and the policy rule. Works on the raw record and allocates nothing when the lookups hit their
// caches, because it runs for every event. Pure: lookups come in through FlowContext.
import { Direction, OFF } from './event.ts';
import { HOST_LITTLE_ENDIAN } from '../net/index.ts';
import type { RuleInfo } from '../core.ts';
import type { FlowEndpoint, Timestamp } from './types.ts';

export interface EndpointView {
  id: number;
  identity: number;
  labels: Record<string, string>;
  containerId: string;
  namespace?: string;
  podName?: string;
  hostIfName?: string;
  /** Prebuilt, shared by every flow of this endpoint (flows are never mutated). */
  ref?: SideRef;
}

/** One end of a flow as looked up: the Hubble endpoint record, plus the container when it is local. */
export interface SideRef {
  endpoint: FlowEndpoint;
  containerId?: string;
}

/** The policy rule behind a verdict, as the policy service describes it. */
export type RuleDescription = RuleInfo;

export interface FlowContext {
  nodeName: string;
  /** Set in cluster mode: local endpoints carry it as cluster_name. */
  clusterName?: string;
  /** Wall clock minus CLOCK_MONOTONIC (what bpf_ktime_get_ns counts); see splitOffset. */
  wallOffset: Timestamp;
  endpointById(id: number): EndpointView | undefined;
  /** The local endpoint owning the address at buf[offset..] (4 or 16 bytes by family). */
  endpointByAddress(buf: Buffer, offset: number, family: number): EndpointView | undefined;
  labelsOfIdentity(identity: number): Record<string, string> | undefined;
  describeRule(ruleId: number): RuleDescription | undefined;
  /** Peers off this node by identity: identities are immutable label sets, so entries never go stale. */
  peerCache?: Map<number, SideRef>;
  /** Rule descriptions by rule id (the id encodes all but the policy name, which is kept for flows
   *  of a policy deleted since). null: the policy service does not know it. */
  ruleCache?: Map<number, RuleDescription | null>;
  /** Bumped whenever what endpointById/endpointByAddress answer changes (an endpoint put, removed, the
   *  table rebuilt). Set, it lets the collector reuse an earlier event's lookups (EnrichMemo); unset,
   *  every event is looked up. */
  version?: number;
}

/** The looked-up parts of one flow; reused between events by the collector. */
export interface FlowRefs {
  src: SideRef | undefined;
  dst: SideRef | undefined;
  ifName: string | undefined;
  rule: RuleDescription | undefined;
  /** Both ends were local endpoints found by address (src and dst do not depend on the observer). */
  addrHits: boolean;
}

export function emptyRefs(): FlowRefs {
  return { src: undefined, dst: undefined, ifName: undefined, rule: undefined, addrHits: false };
}

export function labelList(labels: Record<string, string>): string[] {
  return Object.entries(labels)
    .map(([k, v]) => (v === '' ? k : `${k}=${v}`))
    .sort();
}

export function sideRefOf(view: EndpointView, clusterName?: string): SideRef {
  const ep: FlowEndpoint = { ID: view.id, identity: view.identity, labels: labelList(view.labels) };
  if (clusterName) ep.clusterName = clusterName;
  if (view.namespace) ep.namespace = view.namespace;
  if (view.podName) ep.podName = view.podName;
  return { endpoint: ep, containerId: view.containerId };
}

const CACHE_LIMIT = 10_000; // CIDR identities and rules are many: stay bounded

function peer(identity: number, ctx: FlowContext): SideRef | undefined {
  if (!identity) return undefined;
  const cached = ctx.peerCache?.get(identity);
  if (cached) return cached;
  const labels = ctx.labelsOfIdentity(identity);
  if (!labels) return undefined; // not known (yet): the flow shows the bare identity
  const ep: SideRef = { endpoint: { identity, labels: labelList(labels) } };
  if (ctx.peerCache) {
    if (ctx.peerCache.size >= CACHE_LIMIT) ctx.peerCache.clear();
    ctx.peerCache.set(identity, ep);
  }
  return ep;
}

export function rule(ruleId: number, ctx: FlowContext): RuleDescription | undefined {
  if (!ruleId) return undefined;
  const cached = ctx.ruleCache?.get(ruleId);
  if (cached !== undefined) return cached ?? undefined;
  const d = ctx.describeRule(ruleId);
  // Cache only what is known: a rule that is not known yet may be named by a policy still loading.
  if (d && ctx.ruleCache) {
    if (ctx.ruleCache.size >= CACHE_LIMIT) ctx.ruleCache.clear();
    ctx.ruleCache.set(ruleId, d);
  }
  return d;
}

export function side(view: EndpointView | undefined, identity: number, ctx: FlowContext): SideRef | undefined {
  if (view) return view.ref ?? sideRefOf(view, ctx.clusterName);
  return peer(identity, ctx);
}

/** A host-order u32 of a record the collector has checked is whole: plain byte reads, which V8 inlines
 *  here (Buffer#readUInt32LE, with its argument checks, showed as a call of its own in the agent's
 *  profile at a node's connection rate). */
function u32(buf: Buffer, o: number): number {
  return HOST_LITTLE_ENDIAN
    ? (buf[o] | (buf[o + 1] << 8) | (buf[o + 2] << 16) | (buf[o + 3] << 24)) >>> 0
    : ((buf[o] << 24) | (buf[o + 1] << 16) | (buf[o + 2] << 8) | buf[o + 3]) >>> 0;
}

/** Whether the records at buf[a..] and buf[b..] carry the same family and addresses. */
function sameAddresses(buf: Buffer, a: number, b: number, family: number): boolean {
  if (buf[a + OFF.FAMILY] !== family) return false;
  const n = family === 4 ? 4 : 16;
  for (let i = 0; i < n; i++)
    if (buf[a + OFF.SADDR + i] !== buf[b + OFF.SADDR + i] || buf[a + OFF.DADDR + i] !== buf[b + OFF.DADDR + i]) return false;
  return true;
}

/** The lookups of the last IPv4 event per direction, reused for an event with the same observer,
 *  addresses, identities, rule and direction while the endpoint table is unchanged (ctx.version):
 *  what enrichRaw finds depends on nothing else (ports and flags do not enter it; identities' labels
 *  never change and the caches keep rules as first found). A node's flows are mostly the same few pod
 *  pairs again and again (each connection is a FLOW_NEW and a FLOW_END on each node), so most events
 *  skip their four or five map lookups. Only complete lookups are kept: an identity or rule not known
 *  yet is looked up again next time, as without the memo. */
export class EnrichMemo {
  /** Per direction: the key (version, observer, source and destination identity and address, rule)... */
  private readonly key = new Float64Array(2 * 7).fill(-1);
  /** ...and what was found for it. */
  private readonly found: (FlowRefs | undefined)[] = [undefined, undefined];
  /** The last buffer recalled from (the collector's is always the flow ring's log) as host-order words. */
  private buf?: Buffer;
  private words?: Uint32Array;

  /** Fills `out` from the memo if the record at buf[offset..] has the key of the last one of its
   *  direction; false: look it up (then `remember`). */
  recall(buf: Buffer, offset: number, ctx: FlowContext, out: FlowRefs): boolean {
    const version = ctx.version;
    if (version === undefined || buf[offset + OFF.FAMILY] !== 4) return false;
    const k = (buf[offset + OFF.DIRECTION] & 1) * 7;
    const key = this.key;
    if (((buf.byteOffset + offset) & 3) === 0) {
      // Word-aligned (the flow ring's log always is): one load per field instead of four.
      if (buf !== this.buf) {
        this.buf = buf;
        this.words = new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2);
      }
      const w = this.words!;
      const o = offset >>> 2;
      if (
        key[k] !== version ||
        key[k + 1] !== w[o + OFF.ENDPOINT / 4] ||
        key[k + 2] !== w[o + OFF.SRC_ID / 4] ||
        key[k + 3] !== w[o + OFF.DST_ID / 4] ||
        key[k + 4] !== w[o + OFF.SADDR / 4] ||
        key[k + 5] !== w[o + OFF.DADDR / 4] ||
        key[k + 6] !== w[o + OFF.RULE / 4]
      )
        return false;
    } else if (
      key[k] !== version ||
      key[k + 1] !== u32(buf, offset + OFF.ENDPOINT) ||
      key[k + 2] !== u32(buf, offset + OFF.SRC_ID) ||
      key[k + 3] !== u32(buf, offset + OFF.DST_ID) ||
      key[k + 4] !== u32(buf, offset + OFF.SADDR) ||
      key[k + 5] !== u32(buf, offset + OFF.DADDR) ||
      key[k + 6] !== u32(buf, offset + OFF.RULE)
    )
      return false;
    const f = this.found[k / 7]!;
    out.src = f.src;
    out.dst = f.dst;
    out.ifName = f.ifName;
    out.rule = f.rule;
    out.addrHits = f.addrHits;
    return true;
  }

  /** Keeps what enrichRaw just found for the record at buf[offset..] (its observer found, when it
   *  names one), when it is complete. */
  remember(buf: Buffer, offset: number, ctx: FlowContext, refs: FlowRefs): void {
    const version = ctx.version;
    if (version === undefined || buf[offset + OFF.FAMILY] !== 4) return;
    const endpoint = u32(buf, offset + OFF.ENDPOINT),
      srcId = u32(buf, offset + OFF.SRC_ID),
      dstId = u32(buf, offset + OFF.DST_ID),
      ruleId = u32(buf, offset + OFF.RULE);
    if ((srcId && !refs.src) || (dstId && !refs.dst) || (ruleId && !refs.rule)) return;
    const k = (buf[offset + OFF.DIRECTION] & 1) * 7;
    const key = this.key;
    key[k] = version;
    key[k + 1] = endpoint;
    key[k + 2] = srcId;
    key[k + 3] = dstId;
    key[k + 4] = u32(buf, offset + OFF.SADDR);
    key[k + 5] = u32(buf, offset + OFF.DADDR);
    key[k + 6] = ruleId;
    const f = (this.found[k / 7] ??= emptyRefs());
    f.src = refs.src;
    f.dst = refs.dst;
    f.ifName = refs.ifName;
    f.rule = refs.rule;
    f.addrHits = refs.addrHits;
  }
}

/** Fills `out` for the record at buf[offset..]. prev: the offset of the event `out` was last filled
 *  for when it is the other observation point of the same packet (a pod-to-pod pair record), else -1.
 *  When both of that event's addresses were local endpoints, this one's ends are the same records
 *  (found by address, whoever observes): only the observer and the rule are looked up again, which
 *  saves the pair's second event two address lookups. memo: reuse an earlier event's lookups (EnrichMemo). */
export function enrichRaw(buf: Buffer, offset: number, ctx: FlowContext, out: FlowRefs, prev = -1, memo?: EnrichMemo): FlowRefs {
  if (memo?.recall(buf, offset, ctx, out)) return out;
  const endpointId = u32(buf, offset + OFF.ENDPOINT);
  const observer = endpointId ? ctx.endpointById(endpointId) : undefined;
  const family = buf[offset + OFF.FAMILY];
  if (prev < 0 || !out.addrHits || !sameAddresses(buf, prev, offset, family)) {
    const egress = buf[offset + OFF.DIRECTION] === Direction.EGRESS;
    // The addresses are the packet's; the observing endpoint is its source when it sent the packet.
    const srcHit = ctx.endpointByAddress(buf, offset + OFF.SADDR, family);
    const dstHit = ctx.endpointByAddress(buf, offset + OFF.DADDR, family);
    out.addrHits = srcHit !== undefined && dstHit !== undefined;
    out.src = side(srcHit ?? (egress ? observer : undefined), u32(buf, offset + OFF.SRC_ID), ctx);
    out.dst = side(dstHit ?? (!egress ? observer : undefined), u32(buf, offset + OFF.DST_ID), ctx);
  }
  out.ifName = observer?.hostIfName;
  out.rule = rule(u32(buf, offset + OFF.RULE), ctx);
  if (memo && (observer || !endpointId)) memo.remember(buf, offset, ctx, out);
  return out;
}
