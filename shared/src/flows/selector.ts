// Label selectors in Kubernetes syntax as Hubble's source_label/destination_label filters take
// them, over flow labels written "source:key=value":
//   app=web   app==web   app!=web   app in (web,api)   app notin (db)   app   !app   port>8000
// comma-separated requirements must all hold. A key without a label source ("app") matches the key
// under any source ("k8s:app", "docker:app"); "k8s:app" only the k8s one. Pure.
import { splitKey } from '../identity/labels.ts';

export class SelectorError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SelectorError';
  }
}

type Op = 'eq' | 'ne' | 'in' | 'notin' | 'exists' | 'absent' | 'gt' | 'lt';

export interface Requirement {
  /** null: any source. */
  source: string | null;
  key: string;
  op: Op;
  values: string[];
}

export interface ParsedLabel {
  source: string | null;
  key: string;
  value: string;
}

const KEY = '[A-Za-z0-9][-A-Za-z0-9_./:]*';
const VALUE = '[^\\s,()!=<>]*';
const RE = {
  absent: new RegExp(`^!\\s*(${KEY})$`),
  compare: new RegExp(`^(${KEY})\\s*(==|=|!=)\\s*(${VALUE})$`),
  set: new RegExp(`^(${KEY})\\s+(in|notin)\\s*\\(([^()]*)\\)$`),
  order: new RegExp(`^(${KEY})\\s*([<>])\\s*(-?\\d+)$`),
  exists: new RegExp(`^(${KEY})$`),
};

/** Splits on commas outside parentheses. */
function terms(text: string): string[] {
  const out: string[] = [];
  let depth = 0,
    cur = '';
  for (const ch of text) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (depth < 0) throw new SelectorError(`"${text}": unbalanced ")"`);
    if (ch === ',' && depth === 0) {
      out.push(cur);
      cur = '';
      continue;
    }
    cur += ch;
  }
  if (depth) throw new SelectorError(`"${text}": unbalanced "("`);
  out.push(cur);
  return out.map((s) => s.trim());
}

function keyOf(raw: string): { source: string | null; key: string } {
  const k = splitKey(raw);
  return { source: k.source === 'any' ? null : k.source, key: k.key };
}

export function parseSelector(text: string): Requirement[] {
  const parts = terms(text);
  if (!parts.length || parts.every((p) => !p)) throw new SelectorError('empty label selector');
  return parts.map((t): Requirement => {
    if (!t) throw new SelectorError(`"${text}": empty requirement between commas`);
    let m = RE.absent.exec(t);
    if (m) return { ...keyOf(m[1]), op: 'absent', values: [] };
    m = RE.compare.exec(t);
    if (m) return { ...keyOf(m[1]), op: m[2] === '!=' ? 'ne' : 'eq', values: [m[3]] };
    m = RE.set.exec(t);
    if (m) {
      const values = m[3].split(',').map((v) => v.trim());
      if (values.some((v) => !new RegExp(`^${VALUE}$`).test(v))) throw new SelectorError(`"${t}": bad value in the set`);
      return { ...keyOf(m[1]), op: m[2] as 'in' | 'notin', values };
    }
    m = RE.order.exec(t);
    if (m) return { ...keyOf(m[1]), op: m[2] === '>' ? 'gt' : 'lt', values: [m[3]] };
    m = RE.exists.exec(t);
    if (m) return { ...keyOf(m[1]), op: 'exists', values: [] };
    throw new SelectorError(`"${t}" is not a label requirement (k=v, k!=v, k in (a,b), k notin (a,b), k, !k)`);
  });
}

export function parseLabels(labels: string[] | undefined): ParsedLabel[] {
  return (labels ?? []).map((l) => {
    const eq = l.indexOf('=');
    const k = splitKey(eq >= 0 ? l.slice(0, eq) : l);
    return { source: k.source, key: k.key, value: eq >= 0 ? l.slice(eq + 1) : '' };
  });
}

function valuesOf(r: Requirement, labels: ParsedLabel[]): string[] {
  const out: string[] = [];
  for (const l of labels) if (l.key === r.key && (r.source === null || r.source === l.source)) out.push(l.value);
  return out;
}

export function requirementsMatch(reqs: Requirement[], labels: ParsedLabel[]): boolean {
  return reqs.every((r) => {
    const have = valuesOf(r, labels);
    switch (r.op) {
      case 'exists':
        return have.length > 0;
      case 'absent':
        return have.length === 0;
      case 'eq':
      case 'in':
        return have.some((v) => r.values.includes(v));
      case 'ne':
      case 'notin':
        return !have.some((v) => r.values.includes(v));
      case 'gt':
        return have.some((v) => /^-?\d+$/.test(v) && Number(v) > Number(r.values[0]));
      case 'lt':
        return have.some((v) => /^-?\d+$/.test(v) && Number(v) < Number(r.values[0]));
    }
    return false;
  });
}
