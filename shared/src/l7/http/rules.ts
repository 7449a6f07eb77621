// HTTP rules of a policy, compiled for matching requests, with Cilium's semantics: every field of a
// rule must match (regexes against the whole value), a request is allowed when one rule of the set
// matches, and headerMatches with a mismatch action let a request through while logging, adding,
// deleting or replacing the header. Pure.
import type { HeaderMatch, HttpRule } from '../../policy/types.ts';
import { absoluteForm } from './parse.ts';
import { compilePolicyRegex } from './regex.ts';

export interface CompiledHttpRule {
  method?: RegExp;
  path?: RegExp;
  host?: RegExp;
  /** Lower-cased names. */
  headers: { name: string; value?: string }[];
  matches: (HeaderMatch & { lname: string })[];
}

/** What a request is matched on. `path` is already normalized, and `altPath` is how lenient servers
 *  read it when that differs (see normalizeTarget). */
export interface RequestView {
  method: string;
  path: string;
  altPath?: string;
  host: string;
  names: string[];
  values: string[];
}

export type HeaderEdit =
  | { op: 'add'; name: string; value: string }
  | { op: 'delete'; name: string }
  | { op: 'replace'; name: string; value: string };

export interface HttpMatch {
  allowed: boolean;
  /** Index of the rule that allowed the request. */
  rule: number;
  edits: HeaderEdit[];
  /** Mismatches of LOG (and the other actions), for the flow record. */
  mismatches: string[];
  /** Denied only as lenient servers read the path (RequestView.altPath): that reading. */
  readAs?: string;
}

const cache = new Map<string, RegExp>();

function regex(src: string | undefined): RegExp | undefined {
  if (!src) return undefined;
  let r = cache.get(src);
  if (!r) {
    r = compilePolicyRegex(src);
    if (cache.size > 10_000) cache.clear();
    cache.set(src, r);
  }
  return r;
}

export function compileHttpRule(r: HttpRule): CompiledHttpRule {
  return {
    method: regex(r.method),
    path: regex(r.path),
    host: regex(r.host),
    headers: r.headers.map((h) => ({ name: h.name.toLowerCase(), ...(h.value !== undefined ? { value: h.value } : {}) })),
    matches: r.headerMatches.map((m) => ({ ...m, lname: m.name.toLowerCase() })),
  };
}

/** The header's values joined by ", " (how a repeated header reads as one), undefined when absent. */
export function headerValue(names: string[], values: string[], lname: string): string | undefined {
  let out: string | undefined;
  for (let i = 0; i < names.length; i++) if (names[i] === lname) out = out === undefined ? values[i] : `${out},${values[i]}`;
  return out;
}

/** A header name as servers that hand headers on as CGI-style variables see it: "X-Role" and "X_Role"
 *  are both HTTP_X_ROLE there (PHP, WSGI servers, anything CGI). */
export const cgiName = (lname: string): string => lname.replaceAll('_', '-');

/** Whether the request carries another header that such a server reads as `lname` ("X_Token" beside a
 *  rule about "X-Token"): which of the two it takes is its own affair, so a rule about the header
 *  never matches then. */
function hasAlias(names: string[], lname: string): boolean {
  let key: string | undefined;
  for (const n of names) {
    if (n === lname || n.length !== lname.length) continue;
    key ??= cgiName(lname);
    if (cgiName(n) === key) return true;
  }
  return false;
}

/** Edits and mismatches of one rule, made only when a header match misses (the rare case). */
interface Effects {
  edits: HeaderEdit[];
  mismatches: string[];
}

function ruleMatches(r: CompiledHttpRule, req: RequestView, path: string, fx: { v?: Effects }): boolean {
  if (r.method && !r.method.test(req.method)) return false;
  if (r.path && !r.path.test(path)) return false;
  if (r.host && !r.host.test(req.host)) return false;
  for (const h of r.headers) {
    const v = headerValue(req.names, req.values, h.name);
    if (v === undefined || (h.value !== undefined && v !== h.value) || hasAlias(req.names, h.name)) return false;
  }
  for (const m of r.matches) {
    const v = headerValue(req.names, req.values, m.lname);
    const aliased = hasAlias(req.names, m.lname);
    const ok = v !== undefined && (m.value === undefined || v === m.value) && !aliased;
    if (ok) continue;
    if (!m.mismatch) return false;
    fx.v ??= { edits: [], mismatches: [] };
    const { edits, mismatches } = fx.v;
    mismatches.push(`${m.name}: ${aliased ? 'alias present' : v === undefined ? 'missing' : 'mismatch'} (${m.mismatch})`);
    // Every edit drops the header's aliases too (exchange.ts rewriteHead).
    if (m.mismatch === 'ADD' && m.value !== undefined) edits.push({ op: 'add', name: m.name, value: m.value });
    else if (m.mismatch === 'DELETE' && (v !== undefined || aliased)) edits.push({ op: 'delete', name: m.lname });
    else if (m.mismatch === 'REPLACE' && m.value !== undefined) edits.push({ op: 'replace', name: m.name, value: m.value });
  }
  return true;
}

// Shared and frozen: most requests change nothing, and nothing may add to these.
const NO_EDITS = Object.freeze([]) as unknown as HeaderEdit[];
const NO_MISMATCHES = Object.freeze([]) as unknown as string[];

/** The first rule that matches decides (and brings its header edits); none matching denies. A path
 *  that lenient servers read differently (req.altPath) must be allowed as they read it too: the proxy
 *  cannot know which reading the server behind it makes, and the stricter outcome is the safe one. */
export function matchHttp(rules: CompiledHttpRule[], req: RequestView): HttpMatch {
  const m = firstMatch(rules, req, req.path);
  if (!m.allowed || req.altPath === undefined || firstMatch(rules, req, req.altPath).allowed) return m;
  return { allowed: false, rule: -1, edits: NO_EDITS, mismatches: NO_MISMATCHES, readAs: req.altPath };
}

function firstMatch(rules: CompiledHttpRule[], req: RequestView, path: string): HttpMatch {
  for (let i = 0; i < rules.length; i++) {
    const fx: { v?: Effects } = {};
    if (ruleMatches(rules[i], req, path, fx))
      return { allowed: true, rule: i, edits: fx.v?.edits ?? NO_EDITS, mismatches: fx.v?.mismatches ?? NO_MISMATCHES };
  }
  return { allowed: false, rule: -1, edits: NO_EDITS, mismatches: NO_MISMATCHES };
}

const UNRESERVED = /%(2[dDeE]|5[fF]|7[eE]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA])/g;

/** RFC 3986 remove_dot_segments over a path that starts with "/". */
function removeDotSegments(path: string): string {
  if (!path.includes('.')) return path;
  const out: string[] = [];
  const segs = path.split('/');
  for (let i = 1; i < segs.length; i++) {
    const s = segs[i];
    if (s === '..') {
      if (out.length) out.pop();
      if (i === segs.length - 1) out.push('');
    } else if (s === '.') {
      if (i === segs.length - 1) out.push('');
    } else out.push(s);
  }
  return `/${out.join('/')}`;
}

/** A request-target as rules see it (normalizeTarget). */
export interface Target {
  path: string;
  host: string;
  /** The path as lenient servers read it, when that differs from `path` (else undefined). */
  altPath: string | undefined;
}

/**
 * Path (with query) and authority of a request-target, as rules see them: percent-encoded unreserved
 * characters decoded and dot segments resolved, the way a server resolves them, so "/public/../admin"
 * is matched as "/admin". The request itself is forwarded as it was sent.
 *
 * Servers do not all read a path alike, and the proxy cannot tell which one is behind it. nginx
 * decodes %2F before it resolves dot segments and merges slashes ("/public/..%2Fadmin" and
 * "/public//../admin" are its "/admin"; measured with Debian's nginx), Tomcat drops ";parameters"
 * ("/public/..;/admin"), Windows servers take a backslash for a slash. When the lenient reading of all
 * of those differs, it is `altPath`, and matchHttp allows the request only if both readings are allowed.
 */
export function normalizeTarget(target: string, hostHeader: string | undefined): Target {
  // The last request's again (head.ts hands out the same strings for the same bytes): its result,
  // shared and never changed by the callers.
  if (target === last.target && hostHeader === last.hostHeader) return last.out;
  const out = normalize(target, hostHeader);
  last = { target, hostHeader, out };
  return out;
}

let last: { target: string; hostHeader: string | undefined; out: Target } = {
  target: '',
  hostHeader: '',
  out: { path: '', host: '', altPath: undefined },
};

/** What lenient servers read differently: an encoded slash or backslash, a backslash, an empty
 *  segment, a ;parameter. */
const READ_LENIENTLY = /%2f|%5c|\\|\/\/|;/i;

function normalize(target: string, hostHeader: string | undefined): Target {
  let path = target;
  let host = hostHeader ?? '';
  if (target.charCodeAt(0) !== 47 /* / */) {
    const abs = absoluteForm(target);
    if (abs) {
      host = abs.authority;
      path = abs.rest || '/';
    } else {
      return { path: target, host: target === '*' ? host : target, altPath: undefined }; // "*" or authority-form (CONNECT)
    }
  }
  const q = path.indexOf('?');
  let p = q < 0 ? path : path.slice(0, q);
  const query = q < 0 ? '' : path.slice(q);
  if (p.includes('%')) p = p.replace(UNRESERVED, (m) => String.fromCharCode(parseInt(m.slice(1), 16)));
  const strict = removeDotSegments(p);
  let altPath: string | undefined;
  if (READ_LENIENTLY.test(p)) {
    const lenient = removeDotSegments(
      p
        .replace(/%2f|%5c|\\/gi, '/')
        .replace(/;[^/]*/g, '')
        .replace(/\/\/+/g, '/'),
    );
    if (lenient !== strict) altPath = lenient + query;
  }
  return { path: strict + query, host, altPath };
}
