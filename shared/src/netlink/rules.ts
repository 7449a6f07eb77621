// Policy routing rules ("ip rule"): the kernel keeps duplicates, so adding is look-then-add.

import { type Conn, drainCache } from './conn.ts';
import { lib, type Ptr } from './lib.ts';
import { AF_INET, afOf } from './parse.ts';
import type { Family } from '../net/index.ts';

const FR_ACT_TO_TBL = 1;

export interface RuleSpec {
  family: Family;
  priority: number;
  /** fwmark / mask: the rule matches packets with (mark & mask) == mark. */
  mark: number;
  mask: number;
  table: number;
}

function ruleObject(r: RuleSpec): string {
  return `${r.family === 6 ? '-6 ' : ''}pref ${r.priority} fwmark 0x${r.mark.toString(16)}/0x${r.mask.toString(16)} lookup ${r.table}`;
}

export function ruleList(c: Conn, family: Family): RuleSpec[] {
  const l = lib();
  const out: (Ptr | null)[] = [null];
  c.exec('rule list', family === 6 ? 'ipv6' : 'ipv4', (sk) => l.rtnl_rule_alloc_cache(sk, afOf(family), out));
  return drainCache(out[0] as Ptr, (p) => {
    const af = l.rtnl_rule_get_family(p) as number;
    if (af !== afOf(family)) return undefined; // the cache holds every family whatever was asked
    return {
      family: af === AF_INET ? 4 : 6,
      priority: l.rtnl_rule_get_prio(p),
      mark: l.rtnl_rule_get_mark(p) >>> 0,
      mask: l.rtnl_rule_get_mask(p) >>> 0,
      table: l.rtnl_rule_get_table(p),
    } as RuleSpec;
  });
}

/** Adds the rule unless an identical one exists. */
export function ruleEnsure(c: Conn, r: RuleSpec): void {
  if (
    ruleList(c, r.family).some((x) => x.priority === r.priority && x.mark === r.mark && x.mask === r.mask && x.table === r.table)
  )
    return;
  const l = lib();
  const rule = l.rtnl_rule_alloc() as Ptr | null;
  if (rule === null) throw new Error('rtnl_rule_alloc: out of memory');
  try {
    l.rtnl_rule_set_family(rule, afOf(r.family));
    l.rtnl_rule_set_prio(rule, r.priority);
    l.rtnl_rule_set_mark(rule, r.mark);
    l.rtnl_rule_set_mask(rule, r.mask);
    l.rtnl_rule_set_table(rule, r.table);
    l.rtnl_rule_set_action(rule, FR_ACT_TO_TBL);
    c.exec('rule add', ruleObject(r), (sk) => l.rtnl_rule_add(sk, rule, 0));
  } finally {
    l.rtnl_rule_put(rule);
  }
}
