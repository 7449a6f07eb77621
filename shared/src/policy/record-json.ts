// The policy set as the store keeps it, serialised from parts serialised once: the parser's worker
// sends each policy and source document as JSON text next to the parsed objects (parse-offloop.ts
// adopts it here), and a record's text is kept with the record. A change to one policy among many
// then costs the agent's event loop string joins, not a JSON.stringify of every rule (issue 9).
import { rawJson, type RawJson } from '../store/index.ts';
import type { PolicyRecord } from './types.ts';

/** A policy's source document kept as the JSON text the parser's worker sent: the agent never reads
 *  it, only hands it out (`policy get`) and stores it, so it is parsed only when serialised. */
export class SourceText {
  private value?: unknown;
  private text?: string;
  /** `json` as a function: worked out when first needed (an edit answer's splice, reparse.ts, is
   *  then paid by the store write, after the maps hold the change). */
  constructor(private readonly make: string | (() => string)) {}
  get json(): string {
    if (this.text === undefined) this.text = typeof this.make === 'string' ? this.make : this.make();
    return this.text;
  }
  toJSON(): unknown {
    if (this.value === undefined) this.value = JSON.parse(this.json);
    return this.value;
  }
}

/** JSON text by object: parsed policies, their sources and records are never changed in place. */
const known = new WeakMap<object, string>();

/** Remembers `json` as the text of `value` (an object the worker serialised as `json`). */
export function adoptJson(value: unknown, json: string): void {
  if (typeof value === 'object' && value !== null) known.set(value, json);
}

/** The same, the text worked out when first needed (see SourceText). */
export function adoptLazyJson(value: object, json: () => string): void {
  lazy.set(value, json);
}
const lazy = new WeakMap<object, () => string>();

/** The JSON text of `value`, worked out once per object. */
export function jsonOf(value: unknown): string {
  if (typeof value !== 'object' || value === null) return JSON.stringify(value) ?? 'null';
  if (value instanceof SourceText) return value.json;
  let j = known.get(value);
  if (j === undefined) known.set(value, (j = lazy.get(value)?.() ?? JSON.stringify(value)));
  return j;
}

/** A record's JSON: its policy and source from their known text, the small fields stringified. */
export function recordJson(rec: PolicyRecord): string {
  let j = known.get(rec);
  if (j !== undefined) return j;
  const fields: string[] = [];
  for (const [k, v] of Object.entries(rec)) {
    if (v === undefined) continue;
    fields.push(`${JSON.stringify(k)}:${k === 'policy' || k === 'source' ? jsonOf(v) : JSON.stringify(v)}`);
  }
  known.set(rec, (j = `{${fields.join(',')}}`));
  return j;
}

/** The whole persisted set ({revision, nextNumber, records}) as store text. */
export function policySetJson(state: { revision: number; nextNumber: number; records: PolicyRecord[] }): RawJson {
  return rawJson(
    `{"revision":${JSON.stringify(state.revision)},"nextNumber":${JSON.stringify(state.nextNumber)},"records":[${state.records.map(recordJson).join(',')}]}`,
  );
}
