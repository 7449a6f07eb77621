// L7 rules in the compiled policy. Pure.
//
// An allow entry may carry an L7 set: its traffic goes through the proxy, which lets a request through
// when one of the set's HTTP rules matches. Rules are additive, as in Cilium: wherever several allow
// rules match the same traffic, their L7 sets are unioned, and an allow rule without L7 rules allows
// every request (so the traffic need not be proxied at all). Deny still wins over everything.
// The datapath stops at the first entry in probe order (compile.ts), so after deny closure each L7
// entry is closed over its generalizations the same way: it becomes plain allow when a plain allow
// covers it, and takes in the L7 rules of the allow entries that cover it.
import { describeL4, expandPorts } from './ports.ts';
import type { Direction, DnsRule, HttpRule, Rule } from './types.ts';

/** One HTTP rule of a policy, with where it came from (flows name it; trace explains it). */
export interface HttpRuleRef {
  /** Rule id of the policy rule it belongs to (rule-id.ts). */
  ruleId: number;
  /** e.g. "spec.ingress[0].toPorts[0].rules.http[1]" */
  path: string;
  http: HttpRule;
}

/** One DNS rule of a policy (`toPorts[].rules.dns[i]`), with where it came from. */
export interface DnsRuleRef {
  ruleId: number;
  /** e.g. "spec.egress[0].toPorts[0].rules.dns[1]" */
  path: string;
  dns: DnsRule;
}

/** The L7 part of an allow entry. `kind` names the proxy that enforces it: HTTP rules in `rules`,
 *  or DNS rules in `dns` (a query is allowed when its name matches one of them). */
export interface L7Set {
  kind: 'http' | 'dns';
  rules: HttpRuleRef[];
  dns?: DnsRuleRef[];
}

/** The L7 sets a rule puts on its (proto, dport) codes; codes only in plain toPorts are absent. */
export function l7ByCode(rule: Rule, code: (proto: number, dport: number) => number, ruleId: number): Map<number, L7Set> {
  const out = new Map<number, L7Set>();
  if (!rule.l7?.length) return out;
  // A port listed both with and without L7 rules in the same rule is plain: count where each code
  // comes from (the stored rule keeps no object identity between ports and L7 groups).
  const total = new Map<number, number>();
  for (const p of rule.ports)
    for (const k of expandPorts([p])) total.set(code(k.proto, k.dport), (total.get(code(k.proto, k.dport)) ?? 0) + 1);
  const fromL7 = new Map<number, number>();
  for (const g of rule.l7) {
    const set: L7Set = g.dns
      ? { kind: 'dns', rules: [], dns: g.dns.map((dns, i) => ({ ruleId, path: `${g.path}[${i}]`, dns })) }
      : { kind: 'http', rules: g.http.map((http, i) => ({ ruleId, path: `${g.path}[${i}]`, http })) };
    for (const p of g.ports) {
      for (const k of expandPorts([p])) {
        const c = code(k.proto, k.dport);
        fromL7.set(c, (fromL7.get(c) ?? 0) + 1);
        const cur = out.get(c);
        out.set(c, cur ? unionL7(cur, set) : set);
      }
    }
  }
  for (const c of [...out.keys()]) if ((total.get(c) ?? 0) > (fromL7.get(c) ?? 0)) out.delete(c);
  return out;
}

/** Union of two sets' rules (each rule once). Sets of one kind (compile.ts never unions two kinds). */
export function unionL7(a: L7Set, b: L7Set): L7Set {
  if (a === b) return a;
  if (a.kind === 'dns') {
    const seen = new Set((a.dns ?? []).map((r) => `${r.ruleId}|${r.path}`));
    const extra = (b.dns ?? []).filter((r) => !seen.has(`${r.ruleId}|${r.path}`));
    return extra.length ? { kind: 'dns', rules: [], dns: [...(a.dns ?? []), ...extra] } : a;
  }
  const seen = new Set(a.rules.map((r) => `${r.ruleId}|${r.path}`));
  const extra = b.rules.filter((r) => !seen.has(`${r.ruleId}|${r.path}`));
  return extra.length ? { kind: a.kind, rules: [...a.rules, ...extra] } : a;
}

/** What `endpoint get` shows: per direction and port, the peers proxied and the HTTP rules. */
export interface L7Summary {
  direction: Direction;
  port: string;
  /** Peer identities whose traffic on the port goes through the proxy (0 = any peer). */
  peers: number[];
  /** Which proxy: HTTP rules in `rules`, DNS rules in `dns`. */
  kind: L7Set['kind'];
  rules: HttpRuleRef[];
  dns?: DnsRuleRef[];
}

/** Columns of an endpoint's compiled policy (compile.ts LabelPolicy) -> its L7 summary. */
export function l7Summary(
  policy: Record<Direction, { columns: Map<number, Map<number, { l7?: L7Set }>> }>,
  decode: (code: number) => { proto: number; dport: number },
): L7Summary[] {
  const out = new Map<string, L7Summary>();
  for (const direction of ['ingress', 'egress'] as const) {
    for (const [peer, col] of policy[direction].columns) {
      for (const [code, e] of col) {
        if (!e.l7) continue;
        const key = `${direction}|${code}`;
        let s = out.get(key);
        if (!s) out.set(key, (s = { direction, port: describeL4(decode(code)), peers: [], kind: e.l7.kind, rules: [] }));
        s.peers.push(peer);
        for (const r of e.l7.rules) if (!s.rules.some((x) => x.ruleId === r.ruleId && x.path === r.path)) s.rules.push(r);
        for (const r of e.l7.dns ?? [])
          if (!(s.dns ??= []).some((x) => x.ruleId === r.ruleId && x.path === r.path)) s.dns.push(r);
      }
    }
  }
  return [...out.values()];
}
