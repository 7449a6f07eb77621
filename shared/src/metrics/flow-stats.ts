// Per-flow metric bookkeeping on the hot path: plain counters in nested objects keyed by constant
// strings (nothing built per event), folded into prom-client only when Prometheus scrapes (an inc()
// through prom-client per event would cost more than handling the event). Pure.
import { DropCode, hubbleDropCode } from '../flows/codes.ts';
import { DatapathVerdict, Direction, EVENT_FLAG_AUDIT, EventType, OFF } from '../flows/event.ts';
import { readHostU32 } from '../net/index.ts';
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

type Counts = Record<string, Record<string, number>>;
export type PolicyAction = 'allowed' | 'denied' | 'audit';

function bump(c: Counts, a: string, b: string): void {
  const inner = c[a] ?? (c[a] = {});
  inner[b] = (inner[b] ?? 0) + 1;
}

const TYPE_NAMES: Record<number, FlowEventType> = {
  [EventType.FLOW_NEW]: 'FLOW_NEW',
  [EventType.DROP]: 'DROP',
  [EventType.FLOW_END]: 'FLOW_END',
};
// "direction action" keys, prebuilt so the hot path concatenates nothing.
const POLICY_KEYS: Record<'ingress' | 'egress', Record<PolicyAction, string>> = {
  ingress: { allowed: 'ingress allowed', denied: 'ingress denied', audit: 'ingress audit' },
  egress: { allowed: 'egress allowed', denied: 'egress denied', audit: 'egress audit' },
};

export class FlowStats {
  /** verdict -> event type -> flows */
  readonly flows: Counts = {};
  /** "direction action" -> match -> verdicts */
  readonly policy: Counts = {};

  /** One event straight from its bytes (the agent's path; mirrors record()). */
  recordRaw(buf: Buffer, offset: number): void {
    const type = buf[offset + OFF.TYPE] | (buf[offset + OFF.TYPE + 1] << 8);
    const v = buf[offset + OFF.VERDICT];
    const audit = (buf[offset + OFF.FLAGS] & EVENT_FLAG_AUDIT) !== 0 || v === DatapathVerdict.AUDIT;
    const verdict: Verdict = audit
      ? 'AUDIT'
      : v === DatapathVerdict.DROPPED || type === EventType.DROP
        ? 'DROPPED'
        : v === DatapathVerdict.FORWARDED || v === DatapathVerdict.REDIRECTED
          ? 'FORWARDED'
          : 'VERDICT_UNKNOWN';
    const eventType = TYPE_NAMES[type] ?? 'EVENT_TYPE_UNKNOWN';
    bump(this.flows, verdict, eventType);
    const reason = buf[offset + OFF.REASON] | (buf[offset + OFF.REASON + 1] << 8);
    // 133 POLICY_DENIED (181 POLICY_DENY) in Hubble's codes; 1 the same from a wave-1 datapath.
    const action = actionOf(verdict, eventType, isPolicyDrop(hubbleDropCode(reason)));
    if (action) {
      const egress = buf[offset + OFF.DIRECTION] === Direction.EGRESS;
      bump(
        this.policy,
        POLICY_KEYS[egress ? 'egress' : 'ingress'][action],
        readHostU32(buf, offset + OFF.RULE) ? 'rule' : 'none',
      );
    }
  }

  record(f: Flow): void {
    bump(this.flows, f.verdict, FROM_FLOW[f.membrane?.event ?? 'MEMBRANE_EVENT_UNKNOWN']);
    const action = policyAction(f);
    if (action) {
      const rule = f.egressAllowedBy ?? f.ingressAllowedBy ?? f.egressDeniedBy ?? f.ingressDeniedBy;
      bump(
        this.policy,
        POLICY_KEYS[f.trafficDirection === 'EGRESS' ? 'egress' : 'ingress'][action],
        rule?.length ? 'rule' : 'none',
      );
    }
  }

  /** [verdict, type, count] */
  flowTotals(): [string, string, number][] {
    return Object.entries(this.flows).flatMap(([v, byType]) =>
      Object.entries(byType).map(([ty, n]) => [v, ty, n] as [string, string, number]),
    );
  }

  /** [direction, action, match, count] */
  policyTotals(): [string, string, string, number][] {
    return Object.entries(this.policy).flatMap(([da, byMatch]) => {
      const [direction, action] = da.split(' ');
      return Object.entries(byMatch).map(([match, n]) => [direction, action, match, n] as [string, string, string, number]);
    });
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
