// A re-import that differs from the parser worker's last accepted text inside one rule reads that
// rule only (issue 17: a one-rule change among 10,000 enforced in proportion to the change). After
// a text parsed clean as one CiliumNetworkPolicy (or clusterwide) with one `spec`, written as JSON,
// the worker works out where each rule element sits in it, in the source's JSON and in the policy's
// JSON (json-spans.ts), and hands that to the agent, which rereads edits on its own thread
// (parse-offloop.ts). A new text is compared with it byte by byte from both ends; when
// what differs lies inside one rule element, that element alone is parsed and validated, and the
// policy, its JSON and the source's JSON are the last ones with that rule replaced. Anything else
// (another shape, YAML, a rule added or removed, a change across rules or outside the rule lists, a
// rule the schema refuses, other options) is left to the full parse. Why the result is the full
// parse's: the rest of the text is the same bytes and the new element is one JSON value, so the
// document reads as the old one with that array element replaced; nothing else in a policy depends on
// a rule's content (list lengths, the only cross-rule input, did not change); the rule's index and
// path follow from its place. policy-reparse.test.ts checks this against full parses of random edits.
import { type ListSpans, listSpans } from './json-spans.ts';
import { jsonLength } from './fingerprint.ts';
import { MAX_TEXT_BYTES, type ParseOptions, wholeJsonDocument } from './parse.ts';
import { LISTS, specRuleOf } from './schema-cnp.ts';
import { withParseContext } from './schema-common.ts';
import type { Policy, Rule } from './types.ts';

const LIST_NAMES = LISTS.map(([field]) => field);

/** What changed from the last answer, for the agent to apply to the policy and texts it took from it
 *  (so the answer carries one rule, not 10,000 and the texts of the whole policy and document). */
export interface Edit {
  /** The replaced rule's place in the policy's rules; -1: the policy is the last one (the same text,
   *  or an element that reads as the same rule: only the source changed). */
  rule: number;
  ruleJson: string;
  /** Replace [from, to) of the last policy JSON with ruleJson. */
  policyAt: [number, number];
  /** Replace [from, to) of the last source JSON with sourceText; absent: the same source. */
  sourceAt?: [number, number];
  sourceText: string;
}

export interface Reread {
  edit: Edit;
  /** The policy a full parse gives (equal content; unchanged rules are the last parse's objects). */
  policy: Policy;
}

const SAME: Edit = { rule: -1, ruleJson: '', policyAt: [0, 0], sourceText: '' };

/** Edits answered in a row before a full read. */
const MAX_EDITS = 1000;

/** What a reparser keeps besides the text and the policy: handed from the worker, which works it out
 *  after a full read, to the agent, which rereads edits on its own thread (parse-offloop.ts). */
export type ReparseState = Omit<Last, 'text' | 'policy'>;

interface Last {
  /** Edits answered since the full read. */
  edits: number;
  text: string;
  optsKey: string;
  policy: Policy;
  /** Rule elements in `text` and in `sourceJson`, by list; the policy's rules in `policyJson`. */
  textSpans: ListSpans;
  sourceSpans: ListSpans;
  ruleSpans: number[];
  /** Where each list's rules start in the policy's rule array (lists in LISTS order). */
  firstRule: Map<string, number>;
}

/** The index of the span (flat pairs) holding [from, to), or -1. */
function holding(spans: number[], from: number, to: number): number {
  let lo = 0,
    hi = spans.length / 2 - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (spans[2 * mid + 1] < to) lo = mid + 1;
    else if (spans[2 * mid] > from) hi = mid - 1;
    else return mid;
  }
  return -1;
}

/** Spans from `after` on move by `delta` (the text before them changed length). */
function shift(spans: number[], after: number, delta: number): void {
  if (!delta) return;
  for (let j = 0; j < spans.length; j++) if (spans[j] >= after) spans[j] += delta;
}

/** Compared a block at a time: comparing equal strings is a memcmp in V8, a char loop is not (a
 *  1 MB text: well under a millisecond against several). */
const BLOCK = 16 * 1024;

function commonPrefix(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  let p = 0;
  while (p + BLOCK <= n && a.slice(p, p + BLOCK) === b.slice(p, p + BLOCK)) p += BLOCK;
  while (p < n && a.charCodeAt(p) === b.charCodeAt(p)) p++;
  return p;
}

/** The common suffix, at most `max` long (so that it does not overlap the common prefix). */
function commonSuffix(a: string, b: string, max: number): number {
  let s = 0;
  while (s + BLOCK <= max && a.slice(a.length - s - BLOCK, a.length - s) === b.slice(b.length - s - BLOCK, b.length - s))
    s += BLOCK;
  while (s < max && a.charCodeAt(a.length - 1 - s) === b.charCodeAt(b.length - 1 - s)) s++;
  return s;
}

export class Reparser {
  private last?: Last;

  /** The result of reading `text`, when it is the last text with one rule element changed. */
  reread(text: string, opts: ParseOptions): Reread | undefined {
    const last = this.last;
    if (!last || typeof text !== 'string' || JSON.stringify(opts) !== last.optsKey) return undefined;
    // Every so often a full read: what both sides hold by fingerprint (rule-refs.ts) grows by one rule
    // per edit and starts afresh with a full answer.
    if (last.edits >= MAX_EDITS) return undefined;
    if (text.length * 3 > MAX_TEXT_BYTES) return undefined; // the full parse decides on the size
    const old = last.text;
    const p = commonPrefix(old, text);
    if (p === old.length && p === text.length) {
      last.edits++;
      return { policy: last.policy, edit: SAME }; // the same text
    }
    const s = commonSuffix(old, text, Math.min(old.length, text.length) - p);
    const oldTo = old.length - s;
    for (const list of LIST_NAMES) {
      const spans = last.textSpans.get(list);
      const i = spans ? holding(spans, p, oldTo) : -1;
      if (spans && i >= 0) return this.replace(last, text, list, i, spans[2 * i], spans[2 * i + 1], opts);
    }
    return undefined;
  }

  private replace(last: Last, text: string, list: string, i: number, from: number, to: number, opts: ParseOptions) {
    const delta = text.length - last.text.length;
    let item: unknown;
    try {
      item = JSON.parse(text.slice(from, to + delta));
    } catch {
      return undefined; // not one JSON value: the edit reaches beyond the rule
    }
    const ns = last.policy.kind === 'CiliumNetworkPolicy' ? last.policy.namespace : undefined;
    const read = withParseContext(opts, () => specRuleOf(list, item, i, ns));
    if (!read) return undefined; // refused: the full parse words the issues
    const k = (last.firstRule.get(list) ?? 0) + i;
    const [spec] = last.policy.specs;
    const ruleJson = JSON.stringify(read);
    // As the policy's JSON reads back (no undefined fields): what a full read gives the agent.
    const rule = JSON.parse(ruleJson) as Rule;
    const [ra, rb] = [last.ruleSpans[2 * k], last.ruleSpans[2 * k + 1]];
    // The same rule written otherwise (spacing, a null field): the same policy, as the full parse's
    // fingerprint would say; only the source document changed.
    const samePolicy = ruleJson === JSON.stringify(spec.rules[k]);
    if (!samePolicy) {
      const rules = spec.rules.slice();
      rules[k] = rule;
      last.policy = { ...last.policy, specs: [{ ...spec, rules }] };
      shift(last.ruleSpans, rb, ruleJson.length - (rb - ra));
      last.ruleSpans[2 * k + 1] = ra + ruleJson.length;
    }
    const sourceSpans = last.sourceSpans.get(list)!;
    const itemJson = JSON.stringify(item);
    const [sa, sb] = [sourceSpans[2 * i], sourceSpans[2 * i + 1]];
    for (const spans of last.sourceSpans.values()) shift(spans, sb, itemJson.length - (sb - sa));
    sourceSpans[2 * i + 1] = sa + itemJson.length;
    for (const spans of last.textSpans.values()) shift(spans, to, delta);
    last.textSpans.get(list)![2 * i + 1] = to + delta;
    last.text = text;
    last.edits++;
    const edit: Edit = { rule: samePolicy ? -1 : k, ruleJson, policyAt: [ra, rb], sourceAt: [sa, sb], sourceText: itemJson };
    return { policy: last.policy, edit };
  }

  /** What a reread needs besides the text and the policy, given away (this reparser forgets it). */
  handOver(): ReparseState | undefined {
    const last = this.last;
    this.last = undefined;
    if (!last) return undefined;
    const { text: _t, policy: _p, ...state } = last;
    return state;
  }

  /** A reparser holding `text`, read as `policy`, with the state another one handed over. */
  static adopt(state: ReparseState, text: string, policy: Policy): Reparser {
    const r = new Reparser();
    r.last = { ...state, text, policy };
    return r;
  }

  /** After a full parse: keeps what a next reread needs, when the text has the shape it handles
   *  (worked out after the answer went out, so it costs the next import, not this one). */
  remember(
    text: string,
    opts: ParseOptions,
    policies: Policy[],
    policyJson: string[],
    sourceJson: string[],
    sources?: unknown[],
  ): boolean {
    this.last = undefined;
    const [policy] = policies;
    if (policies.length !== 1 || policy.specs.length !== 1 || !text.trimStart().startsWith('{')) return false;
    if (policy.kind !== 'CiliumNetworkPolicy' && policy.kind !== 'CiliumClusterwideNetworkPolicy') return false;
    let doc: { kind?: unknown; spec?: Record<string, unknown>; specs?: unknown };
    try {
      // Read as JSON (not as YAML that starts with "{"): the parse's own value when it was.
      doc = wholeJsonDocument(sources?.[0]) ? (sources![0] as typeof doc) : JSON.parse(text);
    } catch {
      return false;
    }
    if (doc?.kind !== policy.kind || !doc.spec || doc.specs !== undefined) return false;
    const textSpans = listSpans(text, ['spec'], LIST_NAMES);
    // A compact JSON text is its source's JSON: the same spans (copied: each is moved on its own).
    const sourceSpans =
      textSpans && sourceJson[0] === text
        ? new Map([...textSpans].map(([list, spans]) => [list, spans.slice()]))
        : listSpans(sourceJson[0], ['spec'], LIST_NAMES);
    const ruleSpans =
      placeRules(policyJson[0], policy.specs[0].rules) ?? listSpans(policyJson[0], ['specs', 0], ['rules'])?.get('rules');
    if (!textSpans || !sourceSpans || !ruleSpans) return false;
    const firstRule = new Map<string, number>();
    let count = 0;
    for (const list of LIST_NAMES) {
      const items = doc.spec[list];
      const length = Array.isArray(items) ? items.length : 0;
      const spans = (textSpans.get(list)?.length ?? 0) / 2;
      if (spans !== length || (sourceSpans.get(list)?.length ?? 0) / 2 !== length) return false;
      if (!Array.isArray(items)) textSpans.delete(list);
      firstRule.set(list, count);
      count += length;
    }
    if (count !== policy.specs[0].rules.length || ruleSpans.length / 2 !== count) return false;
    const optsKey = JSON.stringify(opts);
    this.last = {
      edits: 0,
      text,
      optsKey,
      policy,
      textSpans,
      sourceSpans,
      ruleSpans,
      firstRule,
    };
    return true;
  }
}

/** The rules' spans in the JSON of a one-spec policy, from the lengths of their JSON texts (as the
 *  worker's fingerprints wrote them): a 1.8 MB policy text is not scanned. undefined: a length is
 *  not known, or the text does not read as expected there (then it is scanned). */
function placeRules(json: string, rules: Rule[]): number[] | undefined {
  const key = '"rules":[';
  // The first such key is the spec's: no value before it holds one (strings escape their quotes,
  // and a selector's keys hold strings or objects, not arrays).
  let at = json.indexOf(key);
  if (at < 0) return undefined;
  at += key.length;
  const out: number[] = [];
  for (const [i, rule] of rules.entries()) {
    const n = jsonLength(rule);
    if (n === undefined || json.charCodeAt(at) !== 123 || json.charCodeAt(at + n - 1) !== 125) return undefined;
    out.push(at, at + n);
    at += n;
    if (json.charCodeAt(at) !== (i === rules.length - 1 ? 93 : 44)) return undefined; // ] or ,
    at++;
  }
  return json.slice(at) === '}]}' ? out : undefined;
}

/** `text` with [from, to) replaced: the agent's copy of the worker's policy or source JSON. A function,
 *  called when the text is first needed (the store write, after the maps hold the change): slicing a
 *  spliced text flattens it, a copy of megabytes. */
export function spliced(text: () => string, [from, to]: [number, number], insert: string): () => string {
  let before: (() => string) | undefined = text;
  let out: string | undefined;
  return () => {
    if (before) {
      const t = before();
      out = t.slice(0, from) + insert + t.slice(to);
      // Let the text it came from go: each edit's text would otherwise hold all earlier ones (a few
      // MB per edit). Its slices keep only that one text, flattened when the next edit slices this.
      before = undefined;
    }
    return out!;
  };
}
