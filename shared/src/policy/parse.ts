// Policy documents (YAML or JSON text) -> normalized policies, or issues that name the document, the
// field and the line. Never throws for bad input: every failure becomes an issue (the fuzz test holds
// it to that). JSON takes a fast path (JSON.parse); positions are only worked out when there are
// errors to report, by re-reading the text with the YAML parser (JSON is YAML).
import { LineCounter, parseAllDocuments, isMap, isPair, isScalar, type Document } from 'yaml';
import type { z } from 'zod';
import { ciliumPolicyMemoSchema, ciliumPolicySchema, ciliumRuleSchema } from './schema-cnp.ts';
import { NAMESPACE_NAME, parseContext, withParseContext, type ParseContext } from './schema-common.ts';
import { networkPolicySchema } from './schema-k8s.ts';
import { closestField, isField, placeOf, UNSUPPORTED } from './fields.ts';
import { fastLoadAll, mayUseAliases } from './yaml-fast.ts';
import type { Policy } from './types.ts';

export const MAX_TEXT_BYTES = 64 * 1024 * 1024;
export const MAX_DOCUMENTS = 10_000;

/** A document without kind and apiVersion but with one of these is a bare Cilium rule. */
const RULE_FIELDS = ['endpointSelector', 'ingress', 'ingressDeny', 'egress', 'egressDeny', 'labels', 'nodeSelector'];

export interface PolicyIssue {
  /** 0-based document index in the text (YAML `---` documents, JSON array items, List items). */
  doc: number;
  /** 1-based; absent when the text could not be mapped (e.g. the text is not YAML at all). */
  line?: number;
  column?: number;
  /** Dotted field path, e.g. "spec.ingress[0].toPorts[0].ports[0].port" ("" for the document). */
  path: string;
  message: string;
}

export interface ParseResult {
  policies: Policy[];
  /** The document each policy came from, as plain data or (read in the worker) its JSON text, parsed
   *  when serialised (record-json.ts): kept for `policy get`. */
  sources: unknown[];
  issues: PolicyIssue[];
  /** Fingerprints (fingerprint.ts) of each policy and of each rule by policy, spec and rule, when
   *  the parser worked them out (the worker does; parse-offloop.ts adopts them). */
  fingerprints?: { policies: string[]; rules: string[][][] };
}

type PathSeg = string | number;
/** One policy document: `doc` numbers it for users, `yamlDoc` is the YAML document holding it. */
interface RawDoc {
  value: unknown;
  doc: number;
  yamlDoc: number;
  base: PathSeg[];
}
/** An issue plus what locating it needs (stripped before it is returned). */
interface RawIssue {
  issue: PolicyIssue;
  yamlDoc: number;
  segments: PathSeg[];
  isKey?: boolean;
}

export function formatIssue(i: PolicyIssue, file = '<input>'): string {
  const where = i.line ? `${file}:${i.line}:${i.column ?? 1}` : file;
  return `${where}: ${i.path ? `${i.path}: ` : ''}${i.message}`;
}

/** The import's namespace (-n) and what the agent knows (its cluster); see schema-common.ts. */
export type ParseOptions = ParseContext;

export function parsePolicies(text: string, opts: ParseOptions = {}): ParseResult {
  try {
    if (opts.namespace !== undefined && !NAMESPACE_NAME.test(opts.namespace))
      return fatal(`namespace "${opts.namespace}" is not a valid namespace name`);
    const r = withParseContext(opts, () => parseUnsafe(text));
    // A refused document is read again without the memo: its issues are the plain schema's.
    if (r.issues.length && opts.memo) return parsePolicies(text, { ...opts, memo: undefined });
    return r;
  } catch (e) {
    // A bug in a schema must still come out as an issue, not crash the agent or the CLI.
    return {
      policies: [],
      sources: [],
      issues: [{ doc: 0, path: '', message: `internal error while reading the policy: ${(e as Error).message}` }],
    };
  }
}

/** Top-level values of texts read whole as JSON (a policy's source is one when the text was one
 *  JSON object): reparse.ts takes it instead of reading the text again. */
const readAsJson = new WeakSet<object>();
export function wholeJsonDocument(source: unknown): boolean {
  return typeof source === 'object' && source !== null && readAsJson.has(source);
}

function parseUnsafe(text: string): ParseResult {
  if (typeof text !== 'string') return fatal('the policy text must be a string');
  if (Buffer.byteLength(text) > MAX_TEXT_BYTES) return fatal(`the policy text is larger than ${MAX_TEXT_BYTES / 1048576} MiB`);
  const trimmed = text.trimStart();
  let raws: RawDoc[] | null = null;
  if (trimmed.startsWith('{') || trimmed.startsWith('[')) {
    try {
      const value: unknown = JSON.parse(text);
      if (value && typeof value === 'object') readAsJson.add(value);
      raws = splitDocs([value], true);
    } catch {
      raws = null;
    } // not JSON after all: YAML reports it
  }
  let yamlDocs: Document.Parsed[] | null = null;
  let lines: LineCounter | null = null;
  const fast = raws ? null : fastLoadAll();
  if (!raws && fast && !mayUseAliases(text)) {
    try {
      const values = fast(text);
      raws = splitDocs(values, values.length === 1 && Array.isArray(values[0]));
    } catch {
      raws = null;
    } // a syntax error: the YAML parser below reports it with its position
  }
  if (!raws) {
    ({ docs: yamlDocs, lines } = readYaml(text));
    const syntax = yamlSyntaxIssues(yamlDocs, lines);
    if (syntax.length) return { policies: [], sources: [], issues: syntax };
    const values: unknown[] = [];
    for (const [i, d] of yamlDocs.entries()) {
      try {
        values.push(d.toJS({ maxAliasCount: 1000 }));
      } catch (e) {
        return {
          policies: [],
          sources: [],
          issues: [{ doc: i, path: '', message: `cannot read the document: ${(e as Error).message}` }],
        };
      }
    }
    raws = splitDocs(values, yamlDocs.length === 1 && values[0] !== null && Array.isArray(values[0]));
  }
  if (raws.length > MAX_DOCUMENTS) return fatal(`${raws.length} documents; at most ${MAX_DOCUMENTS} per import`);

  const policies: Policy[] = [];
  const sources: unknown[] = [];
  const issues: RawIssue[] = [];
  const seen = new Map<string, number>();
  for (const raw of raws) {
    const r = validateOne(raw);
    if ('issues' in r) {
      issues.push(...r.issues);
      continue;
    }
    const before = seen.get(r.policy.name);
    if (before !== undefined) {
      issues.push(
        rawIssue(
          raw,
          ['metadata', 'name'],
          `policy "${r.policy.name}" appears twice in this input (also document ${before + 1})`,
        ),
      );
      continue;
    }
    seen.set(r.policy.name, raw.doc);
    policies.push(r.policy);
    sources.push(raw.value);
  }
  if (!issues.length) return { policies, sources, issues: [] };
  if (!yamlDocs) ({ docs: yamlDocs, lines } = readYaml(text));
  return { policies: [], sources: [], issues: issues.map((i) => locate(i, yamlDocs!, lines!)) };
}

function rawIssue(raw: RawDoc, path: PathSeg[], message: string, isKey = false): RawIssue {
  const segments = [...raw.base, ...path];
  return { issue: { doc: raw.doc, path: pathText(segments), message }, yamlDoc: raw.yamlDoc, segments, isKey };
}

function fatal(message: string): ParseResult {
  return { policies: [], sources: [], issues: [{ doc: 0, path: '', message }] };
}

function readYaml(text: string): { docs: Document.Parsed[]; lines: LineCounter } {
  const lines = new LineCounter();
  const docs = parseAllDocuments(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  // parseAllDocuments returns an EmptyStream (no docs) for empty text.
  return { docs: Array.isArray(docs) ? docs : [], lines };
}

function yamlSyntaxIssues(docs: Document.Parsed[], lines: LineCounter): PolicyIssue[] {
  const out: PolicyIssue[] = [];
  for (const [i, d] of docs.entries()) {
    for (const e of d.errors) {
      const pos = lines.linePos(e.pos[0]);
      out.push({
        doc: i,
        line: pos.line,
        column: pos.col,
        path: '',
        message: `not valid YAML/JSON: ${e.message.split('\n')[0]}`,
      });
    }
  }
  return out;
}

/** Documents, JSON arrays and `kind: *List` wrappers -> one RawDoc per policy document. */
function splitDocs(values: unknown[], topArray: boolean): RawDoc[] {
  const out: RawDoc[] = [];
  values.forEach((v, yamlDoc) => {
    if (v === null || v === undefined) return; // empty YAML document (e.g. a trailing ---)
    if (topArray && Array.isArray(v)) {
      v.forEach((item, i) => {
        out.push({ value: item, doc: i, yamlDoc, base: [i] });
      });
      return;
    }
    const kind = (v as { kind?: unknown })?.kind;
    if (typeof kind === 'string' && kind.endsWith('List') && Array.isArray((v as { items?: unknown }).items)) {
      (v as { items: unknown[] }).items.forEach((item, i) => {
        out.push({ value: item, doc: yamlDoc, yamlDoc, base: ['items', i] });
      });
      return;
    }
    out.push({ value: v, doc: yamlDoc, yamlDoc, base: [] });
  });
  return out;
}

function validateOne(raw: RawDoc): { policy: Policy } | { issues: RawIssue[] } {
  const v = raw.value as { apiVersion?: unknown; kind?: unknown } | null;
  const at = (path: PathSeg[], message: string) => ({ issues: [rawIssue(raw, path, message)] });
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    return at([], 'a policy document must be a mapping with apiVersion, kind, metadata and spec');
  let schema: z.ZodType<Policy>;
  if (v.kind === 'CiliumNetworkPolicy' || v.kind === 'CiliumClusterwideNetworkPolicy')
    schema = parseContext().memo ? ciliumPolicyMemoSchema : ciliumPolicySchema;
  else if (v.kind === 'NetworkPolicy') schema = networkPolicySchema;
  else if (v.kind === undefined && v.apiVersion === undefined && RULE_FIELDS.some((f) => f in v))
    schema = ciliumRuleSchema; // cilium-dbg's rule arrays
  else if (v.kind === undefined)
    return at(
      ['kind'],
      'kind is required: CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy (or a Cilium rule with endpointSelector)',
    );
  else
    return at(
      ['kind'],
      `kind ${JSON.stringify(v.kind)} is not CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy`,
    );
  const r = schema.safeParse(v);
  if (r.success) return { policy: r.data };
  const issues: RawIssue[] = [];
  for (const i of r.error.issues) {
    const path = i.path as PathSeg[];
    if (i.code === 'unrecognized_keys') {
      for (const key of i.keys) {
        const hint = closestField(key);
        const message =
          key in UNSUPPORTED
            ? `${UNSUPPORTED[key]} is not supported by Membrane`
            : isField(key)
              ? `field "${key}" is not allowed here${placeOf(key) ? ` (it belongs ${placeOf(key)})` : ''}`
              : `unknown field "${key}"${hint ? ` (did you mean "${hint}"?)` : ''}`;
        issues.push(rawIssue(raw, [...path, key], message, true));
      }
      continue;
    }
    issues.push(rawIssue(raw, path, i.message));
  }
  return { issues };
}

/** Fills line/column from the YAML nodes (the deepest existing node on the issue's path). */
function locate(r: RawIssue, docs: Document.Parsed[], lines: LineCounter): PolicyIssue {
  const yamlDoc = docs[r.yamlDoc];
  const offset = yamlDoc ? nodeOffset(yamlDoc, r.segments, !!r.isKey) : undefined;
  if (offset === undefined) return r.issue;
  const pos = lines.linePos(offset);
  return { ...r.issue, line: pos.line, column: pos.col };
}

function nodeOffset(doc: Document.Parsed, path: PathSeg[], key: boolean): number | undefined {
  let node: unknown = doc.contents;
  let offset = rangeStart(node);
  for (const [i, seg] of path.entries()) {
    if (!isMap(node) && !(node && typeof node === 'object' && 'items' in node)) break;
    const items = (node as { items: unknown[] }).items;
    let next: unknown;
    if (isMap(node)) {
      const pair = items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(seg));
      if (!pair || !isPair(pair)) break;
      if (key && i === path.length - 1) return rangeStart(pair.key);
      next = pair.value ?? pair.key;
      if (pair.value === null) return rangeStart(pair.key);
    } else {
      next = typeof seg === 'number' ? items[seg] : undefined;
    }
    if (next === undefined) break;
    node = next;
    offset = rangeStart(node) ?? offset;
  }
  return offset;
}

function rangeStart(node: unknown): number | undefined {
  const r = (node as { range?: [number, number, number] } | null)?.range;
  return r ? r[0] : undefined;
}

export function pathText(path: PathSeg[]): string {
  let out = '';
  for (const seg of path) out += typeof seg === 'number' ? `[${seg}]` : out ? `.${seg}` : seg;
  return out;
}
