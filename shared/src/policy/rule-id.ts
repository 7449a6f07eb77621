// Rule ids: the 32-bit number the datapath stores with each policy entry and reports in flow events,
// so `describeRule` can name the policy and rule behind a verdict without a lookup table.
//   bits 31..16  policy number (stable per policy name, persisted with it; 1..65535)
//   bits 15..14  kind: 0 ingress allow, 1 ingress deny, 2 egress allow, 3 egress deny
//   bits 13..0   rule ordinal within that list (specs > 0 continue the numbering after spec 0's rules)
// Rule id 0 means "no rule" (default deny, allow-all of an unselected endpoint, host allowance).
import type { Action, Direction } from './types.ts';

export const MAX_RULES_PER_LIST = 1 << 14;
export const MAX_POLICY_NUMBER = 0xffff;

export function encodeRuleId(policyNumber: number, direction: Direction, action: Action, index: number): number {
  if (!Number.isInteger(policyNumber) || policyNumber < 1 || policyNumber > MAX_POLICY_NUMBER) {
    throw new RangeError(`policy number ${policyNumber} out of range`);
  }
  if (!Number.isInteger(index) || index < 0 || index >= MAX_RULES_PER_LIST) {
    throw new RangeError(`rule index ${index} out of range (at most ${MAX_RULES_PER_LIST} rules per list)`);
  }
  const kind = (direction === 'egress' ? 2 : 0) + (action === 'deny' ? 1 : 0);
  return ((policyNumber << 16) | (kind << 14) | index) >>> 0;
}

export function decodeRuleId(
  ruleId: number,
): { policyNumber: number; direction: Direction; action: Action; index: number } | undefined {
  if (!Number.isInteger(ruleId) || ruleId <= 0 || ruleId > 0xffffffff) return undefined;
  const policyNumber = ruleId >>> 16;
  if (policyNumber === 0) return undefined;
  const kind = (ruleId >>> 14) & 3;
  return {
    policyNumber,
    direction: kind >= 2 ? 'egress' : 'ingress',
    action: kind & 1 ? 'deny' : 'allow',
    index: ruleId & 0x3fff,
  };
}
