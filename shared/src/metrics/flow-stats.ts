// Per-flow metric bookkeeping on the hot path: counters in a typed array at fixed indices (verdict x
// event type, direction x action x match), nothing looked up by name or built per event; turned into
// label values only when Prometheus scrapes (an inc() through prom-client per event would cost more
// than handling the event; string-keyed counters were ~20 % of the agent's per-event time, issue 17).
// Pure.
import { DropCode, hubbleDropCode } from '../flows/codes.ts';
import { DatapathVerdict, Direction, EVENT_FLAG_AUDIT, EventType, OFF } from '../flows/event.ts';
import type { Flow, MembraneEvent, Verdict } from '../flows/types.ts';

/** The datapath event kinds the metrics count (label `type`). */
type FlowEventType = 'FLOW_NEW' | 'DROP' | 'FLOW_END' | 'EVENT_TYPE_UNKNOWN';
const FROM_FLOW: Record<MembraneEvent, FlowEventType> = {
  FLOW_NEW: 'FLOW_NEW',
  FLOW_DROP: 'DROP',
  FLOW_END: 'FLOW_END',
  MEMBRANE_EVENT_UNKNOWN: 'EVENT_TYPE_UNKNOWN',
};
const isPolicyDrop = (code: number) => code === DropCode.POLICY_DENIED || code === DropCode.POLICY_DENY;

export type PolicyAction = 'allowed' | 'denied' | 'audit';

// Index orders (also the order the totals come out in).
// (The datapath's events give the first four; record() takes any.)
const VERDICTS: Verdict[] = ['FORWARDED', 'DROPPED', 'AUDIT', 'VERDICT_UNKNOWN', 'ERROR', 'REDIRECTED', 'TRACED', 'TRANSLATED'];
const V_FORWARDED = 0,
  V_DROPPED = 1,
  V_AUDIT = 2,
  V_UNKNOWN = 3;
const TYPES: FlowEventType[] = ['FLOW_NEW', 'DROP', 'FLOW_END', 'EVENT_TYPE_UNKNOWN'];
const T_NEW = 0,
  T_DROP = 1,
  T_UNKNOWN = 3;
const ACTIONS: PolicyAction[] = ['allowed', 'denied', 'audit'];
const A_ALLOWED = 0,
  A_DENIED = 1,
  A_AUDIT = 2;
const DIRECTIONS = ['ingress', 'egress'] as const;
const MATCHES = ['rule', 'none'] as const;

const verdictIndex = (v: Verdict): number => {
  const i = VERDICTS.indexOf(v);
  return i < 0 ? V_UNKNOWN : i;
};
const typeIndex = (t: FlowEventType): number => TYPES.indexOf(t);
/** The datapath's event type number -> TYPES index. */
const rawTypeIndex = (type: number): number =>
  type === EventType.FLOW_NEW ? 0 : type === EventType.DROP ? T_DROP : type === EventType.FLOW_END ? 2 : T_UNKNOWN;

function actionIndex(verdict: number, type: number, policyDrop: boolean): number {
  if (verdict === V_AUDIT) return A_AUDIT;
  if (type === T_NEW && verdict === V_FORWARDED) return A_ALLOWED;
  if (verdict === V_DROPPED && policyDrop) return A_DENIED;
  return -1;
}

export class FlowStats {
  /** [verdict * 4 + type]: flows */
  private readonly flows = new Float64Array(VERDICTS.length * TYPES.length);
  /** [(direction * 3 + action) * 2 + match]: verdicts (match 0: a rule decided, 1: none) */
  private readonly policy = new Float64Array(DIRECTIONS.length * ACTIONS.length * MATCHES.length);

  /** One event straight from its bytes (the agent's path; mirrors record()). */
  recordRaw(buf: Buffer, offset: number): void {
    const type = rawTypeIndex(buf[offset + OFF.TYPE] | (buf[offset + OFF.TYPE + 1] << 8));
    const v = buf[offset + OFF.VERDICT];
    const verdict =
      (buf[offset + OFF.FLAGS] & EVENT_FLAG_AUDIT) !== 0 || v === DatapathVerdict.AUDIT
        ? V_AUDIT
        : v === DatapathVerdict.DROPPED || type === T_DROP
          ? V_DROPPED
          : v === DatapathVerdict.FORWARDED || v === DatapathVerdict.REDIRECTED
            ? V_FORWARDED
            : V_UNKNOWN;
    this.flows[verdict * TYPES.length + type]++;
    // 133 POLICY_DENIED (181 POLICY_DENY) in Hubble's codes; 1 the same from a wave-1 datapath.
    const policyDrop =
      verdict === V_DROPPED && isPolicyDrop(hubbleDropCode(buf[offset + OFF.REASON] | (buf[offset + OFF.REASON + 1] << 8)));
    const action = actionIndex(verdict, type, policyDrop);
    if (action >= 0) {
      const o = offset + OFF.RULE;
      const hasRule = (buf[o] | buf[o + 1] | buf[o + 2] | buf[o + 3]) !== 0;
      this.bumpPolicy(buf[offset + OFF.DIRECTION] === Direction.EGRESS ? 1 : 0, action, hasRule);
    }
  }

  record(f: Flow): void {
    const verdict = verdictIndex(f.verdict);
    const type = typeIndex(FROM_FLOW[f.membrane?.event ?? 'MEMBRANE_EVENT_UNKNOWN']);
    this.flows[verdict * TYPES.length + type]++;
    const action = actionIndex(verdict, type, isPolicyDrop(f.dropReason ?? 0));
    if (action >= 0) {
      const rule = f.egressAllowedBy ?? f.ingressAllowedBy ?? f.egressDeniedBy ?? f.ingressDeniedBy;
      this.bumpPolicy(f.trafficDirection === 'EGRESS' ? 1 : 0, action, !!rule?.length);
    }
  }

  private bumpPolicy(direction: number, action: number, hasRule: boolean): void {
    this.policy[(direction * ACTIONS.length + action) * MATCHES.length + (hasRule ? 0 : 1)]++;
  }

  /** [verdict, type, count], the counted ones only */
  flowTotals(): [string, string, number][] {
    const out: [string, string, number][] = [];
    for (let v = 0; v < VERDICTS.length; v++)
      for (let t = 0; t < TYPES.length; t++) {
        const n = this.flows[v * TYPES.length + t];
        if (n) out.push([VERDICTS[v], TYPES[t], n]);
      }
    return out;
  }

  /** [direction, action, match, count], the counted ones only */
  policyTotals(): [string, string, string, number][] {
    const out: [string, string, string, number][] = [];
    for (let d = 0; d < DIRECTIONS.length; d++)
      for (let a = 0; a < ACTIONS.length; a++)
        for (let m = 0; m < MATCHES.length; m++) {
          const n = this.policy[(d * ACTIONS.length + a) * MATCHES.length + m];
          if (n) out.push([DIRECTIONS[d], ACTIONS[a], MATCHES[m], n]);
        }
    return out;
  }
}

function actionOf(verdict: Verdict, type: FlowEventType, policyDrop: boolean): PolicyAction | undefined {
  if (verdict === 'AUDIT') return 'audit';
  if (type === 'FLOW_NEW' && verdict === 'FORWARDED') return 'allowed';
  if (verdict === 'DROPPED' && policyDrop) return 'denied';
  return undefined;
}

/** A policy verdict is taken once per connection (its first packet) or per dropped packet. */
export function policyAction(f: Flow): PolicyAction | undefined {
  return actionOf(f.verdict, FROM_FLOW[f.membrane?.event ?? 'MEMBRANE_EVENT_UNKNOWN'], isPolicyDrop(f.dropReason ?? 0));
}
