// DNS name selectors of `toFQDNs` and `toPorts[].rules.dns`: `matchName` (one name) and
// `matchPattern` (wildcards), with Cilium's semantics. Names are compared in their canonical form:
// lower case with the trailing dot ("api.example.com."). In a pattern:
//   * a pattern of stars alone ("*", "**", "*.") matches every name (and the root ".");
//   * a leading run of two or more stars and a dot ("**.example.com") stands for one or more whole
//     labels ("a.example.com", "a.b.example.com", not "example.com");
//   * any other run of stars stands for zero or more name characters [-a-zA-Z0-9_] within one label
//     ("*.example.com" is one label deep; "sub*.example.com" matches "sub.example.com" and
//     "subway.example.com"; "*example.com" matches "example.com" and "www.example.com" but not
//     "a.b.example.com").
// Compiled to anchored regular expressions without backtracking hazards: one character class per
// star run, literal dots. Pure.

export interface FqdnSelector {
  /** Canonical name ("api.example.com."). */
  matchName?: string;
  /** Canonical pattern ("*.example.com."; a stars-only pattern is kept as written, e.g. "*"). */
  matchPattern?: string;
}

export const MAX_NAME_LENGTH = 255;
const NAME_CHARS = /^[-a-zA-Z0-9_.]+$/;
const PATTERN_CHARS = /^[-a-zA-Z0-9_.*]+$/;
const LABEL = '[-a-z0-9_]';

/** Lower case with one trailing dot: the form names are kept and compared in. */
export function canonicalName(name: string): string {
  const n = name.trim().toLowerCase();
  return n.endsWith('.') ? n : `${n}.`;
}

function starsOnly(p: string): boolean {
  const body = p.endsWith('.') ? p.slice(0, -1) : p;
  return body.length > 0 && /^\*+$/.test(body);
}

/** Why a matchName is not valid, or undefined. */
export function nameProblem(name: string): string | undefined {
  const n = name.trim();
  if (!n) return 'must not be empty';
  if (n.length > MAX_NAME_LENGTH) return `must be at most ${MAX_NAME_LENGTH} characters`;
  if (!NAME_CHARS.test(n))
    return `${JSON.stringify(name)} has characters a DNS name cannot have: only a-z, A-Z, 0-9, "-", "_" and "." are allowed`;
  if (/\.\./.test(n) || n.startsWith('.')) return `${JSON.stringify(name)} has an empty label`;
  return undefined;
}

/** Why a matchPattern is not valid, or undefined. */
export function patternProblem(pattern: string): string | undefined {
  const p = pattern.trim();
  if (!p) return 'must not be empty';
  if (p.length > MAX_NAME_LENGTH) return `must be at most ${MAX_NAME_LENGTH} characters`;
  if (!PATTERN_CHARS.test(p))
    return `${JSON.stringify(pattern)} has characters a pattern cannot have: only a-z, A-Z, 0-9, "-", "_", "." and "*" are allowed`;
  if (!starsOnly(p) && (/\.\./.test(p) || p.startsWith('.'))) return `${JSON.stringify(pattern)} has an empty label`;
  return undefined;
}

export function canonicalPattern(pattern: string): string {
  const p = pattern.trim().toLowerCase();
  return starsOnly(p) ? p : canonicalName(p);
}

/** The anchored regular expression (source) of a canonical pattern. */
export function patternRegex(pattern: string): string {
  if (starsOnly(pattern)) return `^(?:(?:${LABEL}+\\.)+|\\.)$`;
  let out = '';
  let i = 0;
  const lead = /^\*{2,}\./.exec(pattern);
  if (lead) {
    out += `(?:${LABEL}+\\.)+`;
    i = lead[0].length;
  }
  for (; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '*') {
      while (pattern[i + 1] === '*') i++;
      out += `${LABEL}*`;
    } else if (c === '.') {
      out += '\\.';
    } else {
      out += c;
    }
  }
  return `^${out}$`;
}

/** "matchName: api.example.com." / "matchPattern: *.example.com.": the selector's identity-label form. */
export function selectorKey(s: FqdnSelector): string {
  return s.matchName !== undefined ? `matchName:${s.matchName}` : `matchPattern:${s.matchPattern}`;
}

/** How a user wrote it, without the canonical trailing dot (for messages and labels). */
export function selectorText(s: FqdnSelector): string {
  const v = s.matchName ?? s.matchPattern ?? '';
  return v.length > 1 && v.endsWith('.') ? v.slice(0, -1) : v;
}

export type NameMatcher = (canonical: string) => boolean;

const compiled = new Map<string, NameMatcher>();

/** A matcher for canonical names. Compiled once per selector. */
export function selectorMatcher(s: FqdnSelector): NameMatcher {
  const key = selectorKey(s);
  let m = compiled.get(key);
  if (!m) {
    if (s.matchName !== undefined) {
      const want = s.matchName;
      m = (name) => name === want;
    } else {
      const re = new RegExp(patternRegex(s.matchPattern!));
      m = (name) => re.test(name);
    }
    if (compiled.size > 10_000) compiled.clear();
    compiled.set(key, m);
  }
  return m;
}

/** A DNS rule (`rules.dns` element) may name both; a name matching either is allowed. */
export function dnsRuleMatches(rule: FqdnSelector, canonical: string): boolean {
  if (rule.matchName !== undefined && selectorMatcher({ matchName: rule.matchName })(canonical)) return true;
  return rule.matchPattern !== undefined && selectorMatcher({ matchPattern: rule.matchPattern })(canonical);
}
