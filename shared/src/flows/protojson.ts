// Protobuf's JSON mapping for our in-memory messages, the way Hubble prints and reads them
// (protojson with proto field names): `membrane observe -o json` lines equal `hubble observe -o json`
// lines, and --allowlist/--denylist take the same JSON FlowFilters. Also field masks
// (GetFlowsRequest.field_mask). Walks the protobufjs reflection, so it follows the .proto files. Pure.
import protobuf from 'protobufjs';
import { camelCaseRoot, protoNameRoot } from './schema.ts';
import type { Timestamp } from './types.ts';

export class ProtoJsonError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtoJsonError';
  }
}

const WRAPPERS = new Set([
  'DoubleValue',
  'FloatValue',
  'Int64Value',
  'UInt64Value',
  'Int32Value',
  'UInt32Value',
  'BoolValue',
  'StringValue',
  'BytesValue',
]);
const LONG = new Set(['int64', 'uint64', 'sint64', 'fixed64', 'sfixed64']);

/** The same-numbered field of the proto-name root: its name is the JSON key. */
function protoField(type: protobuf.Type, id: number): protobuf.Field {
  return protoNameRoot().lookupType(type.fullName).fieldsById[id];
}

function isWellKnown(t: protobuf.Type, name: string): boolean {
  return t.fullName === `.google.protobuf.${name}`;
}

/** RFC 3339 with 0, 3, 6 or 9 fraction digits, as protojson writes a Timestamp. */
export function timestampJson(t: Partial<Timestamp>): string {
  const seconds = Number(t.seconds ?? 0),
    nanos = Number(t.nanos ?? 0);
  const base = new Date(seconds * 1000).toISOString().replace(/\.\d{3}Z$/, '');
  if (!nanos) return `${base}Z`;
  let frac = String(nanos).padStart(9, '0');
  while (frac.endsWith('000')) frac = frac.slice(0, -3);
  return `${base}.${frac}Z`;
}

export function parseTimestampJson(text: string): Timestamp {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$/.exec(text);
  const ms = m ? Date.parse(`${m[1]}${m[3]}`) : NaN;
  if (!m || Number.isNaN(ms)) throw new ProtoJsonError(`"${text}" is not an RFC 3339 timestamp`);
  return { seconds: Math.floor(ms / 1000), nanos: Number((m[2] ?? '').padEnd(9, '0')) };
}

function isDefault(field: protobuf.Field, v: unknown): boolean {
  if (field.resolvedType instanceof protobuf.Type) return false;
  if (field.resolvedType instanceof protobuf.Enum) return v === 0 || v === Object.keys(field.resolvedType.values)[0];
  return v === 0 || v === '' || v === false;
}

function scalarJson(field: protobuf.Field, v: unknown): unknown {
  if (field.resolvedType instanceof protobuf.Enum) {
    return typeof v === 'number' ? (field.resolvedType.valuesById[v] ?? v) : v;
  }
  if (LONG.has(field.type)) return String(v);
  if (field.type === 'bytes') return Buffer.from(v as Uint8Array).toString('base64');
  return v;
}

function valueJson(field: protobuf.Field, v: unknown): unknown {
  const t = field.resolvedType;
  if (t instanceof protobuf.Type) return messageJson(t, v as Record<string, unknown>);
  return scalarJson(field, v);
}

function messageJson(type: protobuf.Type, msg: Record<string, unknown>): unknown {
  if (isWellKnown(type, 'Timestamp')) return timestampJson(msg as Partial<Timestamp>);
  if (type.fullName.startsWith('.google.protobuf.') && WRAPPERS.has(type.name)) {
    const f = type.fieldsById[1];
    return scalarJson(f, msg.value ?? (f.type === 'bool' ? false : f.type === 'string' ? '' : 0));
  }
  if (isWellKnown(type, 'FieldMask')) return ((msg.paths as string[] | undefined) ?? []).join(',');
  const out: Record<string, unknown> = {};
  for (const field of type.fieldsArray) {
    const v = msg[field.name];
    if (v === undefined || v === null) continue;
    const key = protoField(type, field.id).name;
    if (field.repeated) {
      const arr = v as unknown[];
      if (arr.length) out[key] = arr.map((x) => valueJson(field, x));
      continue;
    }
    if (!field.partOf && isDefault(field, v)) continue;
    out[key] = valueJson(field, v);
  }
  return out;
}

/** A message (camelCase, as in memory) as protobuf JSON with proto field names. */
export function toProtoJson(typeName: string, msg: object): unknown {
  return messageJson(camelCaseRoot().lookupType(typeName), msg as Record<string, unknown>);
}

function scalarFromJson(field: protobuf.Field, v: unknown, where: string): unknown {
  const t = field.resolvedType;
  if (t instanceof protobuf.Enum) {
    if (typeof v === 'string' && v in t.values) return v;
    if (typeof v === 'number' && Number.isInteger(v)) return t.valuesById[v] ?? v;
    throw new ProtoJsonError(`${where}: ${JSON.stringify(v)} is not one of ${Object.keys(t.values).slice(0, 6).join(', ')}, ...`);
  }
  if (field.type === 'string') {
    if (typeof v !== 'string') throw new ProtoJsonError(`${where}: expected a string`);
    return v;
  }
  if (field.type === 'bool') {
    if (typeof v !== 'boolean') throw new ProtoJsonError(`${where}: expected true or false`);
    return v;
  }
  if (field.type === 'bytes') {
    if (typeof v !== 'string') throw new ProtoJsonError(`${where}: expected base64 text`);
    return Buffer.from(v, 'base64');
  }
  const n = typeof v === 'string' && /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || Number.isNaN(n)) throw new ProtoJsonError(`${where}: expected a number`);
  if (/int|fixed/.test(field.type) && !Number.isInteger(n)) throw new ProtoJsonError(`${where}: expected a whole number`);
  if (/^(uint|fixed)/.test(field.type) && n < 0) throw new ProtoJsonError(`${where}: expected a number >= 0`);
  return n;
}

function messageFromJson(type: protobuf.Type, json: unknown, where: string): unknown {
  if (isWellKnown(type, 'Timestamp')) {
    if (typeof json !== 'string') throw new ProtoJsonError(`${where}: expected an RFC 3339 timestamp`);
    return parseTimestampJson(json);
  }
  if (type.fullName.startsWith('.google.protobuf.') && WRAPPERS.has(type.name)) {
    return { value: scalarFromJson(type.fieldsById[1], json, where) };
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json))
    throw new ProtoJsonError(`${where}: expected a JSON object`);
  const named = protoNameRoot().lookupType(type.fullName);
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(json)) {
    // protojson accepts both the proto name and the lowerCamelCase JSON name.
    const byProto = named.fields[key];
    const field = byProto ? type.fieldsById[byProto.id] : type.fields[key];
    const path = where ? `${where}.${byProto?.name ?? key}` : (byProto?.name ?? key);
    if (!field) throw new ProtoJsonError(`${path}: unknown field`);
    if (v === null) continue;
    const one = (x: unknown, p: string) =>
      field.resolvedType instanceof protobuf.Type ? messageFromJson(field.resolvedType, x, p) : scalarFromJson(field, x, p);
    if (field.repeated) {
      if (!Array.isArray(v)) throw new ProtoJsonError(`${path}: expected a list`);
      out[field.name] = v.map((x, i) => one(x, `${path}[${i}]`));
    } else {
      out[field.name] = one(v, path);
    }
  }
  return out;
}

/** Protobuf JSON (proto or JSON field names) -> the in-memory camelCase message; unknown fields
 *  and wrong types are errors naming the field. */
export function fromProtoJson<T>(typeName: string, json: unknown): T {
  return messageFromJson(camelCaseRoot().lookupType(typeName), json, '') as T;
}

/** Keeps only the fields named by field mask paths ("source.pod_name", "IP", "l4"). */
export function applyFieldMask<T extends object>(typeName: string, msg: T, paths: string[]): T {
  return maskMessage(
    camelCaseRoot().lookupType(typeName),
    msg as Record<string, unknown>,
    paths.map((p) => p.split('.')),
  ) as T;
}

function maskMessage(type: protobuf.Type, msg: Record<string, unknown>, paths: string[][]): Record<string, unknown> {
  const named = protoNameRoot().lookupType(type.fullName);
  const out: Record<string, unknown> = {};
  for (const path of paths) {
    const field = type.fieldsById[named.fields[path[0]]?.id];
    if (!field || msg[field.name] === undefined) continue;
    if (path.length === 1 || !(field.resolvedType instanceof protobuf.Type) || field.repeated) {
      out[field.name] = msg[field.name];
      continue;
    }
    const sub = maskMessage(field.resolvedType, msg[field.name] as Record<string, unknown>, [path.slice(1)]);
    out[field.name] = { ...(out[field.name] as object | undefined), ...sub };
  }
  return out;
}

/** Throws for a mask path that names no field of the message. */
export function checkFieldMask(typeName: string, paths: string[]): void {
  for (const p of paths) {
    let type: protobuf.Type | null = protoNameRoot().lookupType(typeName);
    for (const part of p.split('.')) {
      const field: protobuf.Field | undefined = type?.fields[part];
      if (!field) throw new ProtoJsonError(`field_mask: "${p}" names no field of ${typeName}`);
      type = field.resolvedType instanceof protobuf.Type ? field.resolvedType : null;
    }
  }
}
