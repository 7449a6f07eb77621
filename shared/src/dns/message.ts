// DNS messages as the proxy needs them, over dns-packet (the wire codec): the question of a query, the
// refusal the proxy answers itself, and what an answer teaches (the query name, its CNAME chain, the
// A/AAAA addresses at the end of it with their TTLs). The proxy forwards the client's bytes and the
// server's bytes unchanged except for the message ID; it decodes, never re-encodes, what it passes on.
// Pure.
import * as packet from 'dns-packet';
import { canonicalName } from '../fqdn/selector.ts';

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
const RCODE_NAMES = Object.fromEntries(Object.entries(RCODE).map(([k, v]) => [v, k])) as Record<number, string>;
export const rcodeName = (rcode: number): string => RCODE_NAMES[rcode] ?? `RCODE${rcode}`;

export interface Query {
  id: number;
  /** Canonical name of the first question ("." for the root). */
  name: string;
  /** Question types ("A", "AAAA", ...). */
  types: string[];
  /** Recursion desired: echoed in answers the proxy makes. */
  rd: boolean;
}

/** The header flag bits dns-packet keeps in `flags` (RD is bit 8, RA bit 7; the opcode bits 11-14). */
const RD = 1 << 8;
const RA = 1 << 7;
const QR = 1 << 15;

/** The query in `buf`, or undefined when it is no query the proxy can read (then it is refused as FORMERR). */
export function readQuery(buf: Buffer): Query | undefined {
  if (buf.length < 12) return undefined;
  const flags = buf.readUInt16BE(2);
  if (flags & QR) return undefined; // a response sent as a query
  // The header and the question only: the rest of a query (EDNS options) is forwarded, not read.
  // One question: a query is judged by its name, and a second one would be asked unjudged of a
  // server that answers both (RFC 9619: QDCOUNT is at most one; Cilium's proxy takes one too).
  const count = buf.readUInt16BE(4);
  if (count !== 1 || !plainName(buf, 12)) return undefined;
  const questions: { name: string; type: string }[] = [];
  let at = 12;
  try {
    for (let i = 0; i < count; i++) {
      questions.push(wire.question.decode(buf, at));
      at += wire.question.decode.bytes;
    }
  } catch {
    return undefined;
  }
  const q = questions[0];
  if (typeof q.name !== 'string') return undefined;
  return {
    id: buf.readUInt16BE(0),
    name: q.name === '' ? '.' : canonicalName(q.name),
    types: questions.map((x) => String(x.type)),
    rd: (flags & RD) !== 0,
  };
}

/** Whether the name at `at` is plain labels: no "." inside a label (dns-packet joins labels with dots
 *  as they are, so the one label "api.allowed" under "example" would be matched as
 *  api.allowed.example, a name the server does not resolve), no space or control byte (names are
 *  matched as text), no compression pointer (nothing before a query's question to point to). */
function plainName(buf: Buffer, at: number): boolean {
  for (;;) {
    if (at >= buf.length) return false;
    const len = buf[at++];
    if (len === 0) return true;
    if (len > 63 || at + len > buf.length) return false;
    for (const end = at + len; at < end; at++) {
      const b = buf[at];
      if (b === 0x2e || b <= 0x20 || b === 0x7f) return false;
    }
  }
}

/** dns-packet's question codec (exported by the package, missing from its type definitions). */
const wire = packet as unknown as {
  question: { decode: ((buf: Buffer, offset: number) => { name: string; type: string }) & { bytes: number } };
};

/** An answer the proxy makes itself: the query's ID, its question echoed (when readable), no records. */
export function refusal(buf: Buffer, rcode: number): Buffer {
  const id = buf.length >= 2 ? buf.readUInt16BE(0) : 0;
  let questions: packet.Question[] = [];
  let flags = 0;
  try {
    const d = packet.decode(buf);
    questions = d.questions ?? [];
    flags = (d.flags ?? 0) & (RD | (0xf << 11));
  } catch {
    /* unreadable: no question to echo */
  }
  return packet.encode({ id, type: 'response', flags: flags | RA | QR | (rcode & 0xf), questions });
}

/** An answer the proxy makes for a query whose bytes it no longer has (the server timed out or
 *  failed): the query's ID and question, no records. A resolver rejects an answer without the question
 *  it asked (c-ares: EBADRESP) instead of taking its rcode. */
export function failure(q: Query, rcode: number): Buffer {
  return packet.encode({
    id: q.id,
    type: 'response',
    flags: (q.rd ? RD : 0) | RA | QR | (rcode & 0xf),
    questions: q.types.map((type) => ({ type: type as packet.RecordType, name: q.name })),
  });
}

export interface Answer {
  rcode: number;
  /** The query name and the CNAME targets after it, canonical, in chain order. */
  names: string[];
  /** CNAME targets (names without the query name). */
  cnames: string[];
  ips: { ip: string; ttl: number }[];
  qtypes: string[];
  rrtypes: string[];
  truncated: boolean;
}

/** What a server's response says, or undefined when it cannot be read (passed on, nothing learned). */
export function readAnswer(buf: Buffer): Answer | undefined {
  let d: packet.DecodedPacket;
  try {
    d = packet.decode(buf);
  } catch {
    return undefined;
  }
  const q = d.questions?.[0];
  const names = q ? [q.name === '' ? '.' : canonicalName(q.name)] : [];
  // Records as plain {type, name, ttl, data} (dns-packet's union types do not narrow on `type`).
  const answers = (d.answers ?? []) as unknown as { type: string; name: string; ttl?: number; data?: unknown }[];
  // Follow the chain from the query name: each CNAME whose owner is the current name; the TTL of an
  // address is the smallest along the chain (a shorter-lived alias ends its validity).
  let chainTtl = Number.POSITIVE_INFINITY;
  for (let guard = 0; guard < 16 && names.length; guard++) {
    const cur = names[names.length - 1];
    const c = answers.find((a) => a.type === 'CNAME' && canonicalName(a.name) === cur);
    if (!c || typeof c.data !== 'string') break;
    const next = canonicalName(c.data);
    if (names.includes(next)) break;
    chainTtl = Math.min(chainTtl, c.ttl ?? 0);
    names.push(next);
  }
  const inChain = new Set(names);
  const ips: Answer['ips'] = [];
  for (const a of answers) {
    if ((a.type === 'A' || a.type === 'AAAA') && typeof a.data === 'string' && inChain.has(canonicalName(a.name))) {
      ips.push({ ip: a.data, ttl: Math.min(a.ttl ?? 0, chainTtl) });
    }
  }
  return {
    rcode: (d.flags ?? 0) & 0xf,
    names,
    cnames: names.slice(1),
    ips,
    qtypes: (d.questions ?? []).map((x) => String(x.type)),
    rrtypes: [...new Set(answers.map((a) => String(a.type)))],
    truncated: ((d.flags ?? 0) & packet.TRUNCATED_RESPONSE) !== 0,
  };
}

/** Does `a` answer `q`: the same first question name and question types? An answer to another
 *  question (a confused or hostile server, or a forged datagram) must teach nothing. */
export function answersQuery(a: Answer, q: Query): boolean {
  return a.names[0] === q.name && a.qtypes.length === q.types.length && a.qtypes.every((t, i) => t === q.types[i]);
}

/** readQuery and readAnswer for a stream of messages in which the same bytes come again and again
 *  (one client asking one name; a server answering it alike until its TTLs tick): a message is decoded
 *  once per distinct content after its ID (an Answer does not carry the ID; a Query gets its own).
 *  What is returned is shared: callers do not change it. Bounded: the bytes are the peers' to choose. */
export class MessageReader {
  private readonly queries = new Map<string, Query | undefined>();
  private readonly answers = new Map<string, Answer | undefined>();

  constructor(private readonly max = 1024) {}

  query(buf: Buffer): Query | undefined {
    if (buf.length < 12 || buf.length > 512) return readQuery(buf);
    const key = buf.toString('latin1', 2);
    let q = this.queries.get(key);
    if (q === undefined && !this.queries.has(key)) this.remember(this.queries, key, (q = readQuery(buf)));
    return q && { id: buf.readUInt16BE(0), name: q.name, types: q.types, rd: q.rd };
  }

  answer(buf: Buffer): Answer | undefined {
    if (buf.length < 12 || buf.length > 1232) return readAnswer(buf);
    const key = buf.toString('latin1', 2);
    let a = this.answers.get(key);
    if (a === undefined && !this.answers.has(key)) this.remember(this.answers, key, (a = readAnswer(buf)));
    return a;
  }

  private remember<T>(m: Map<string, T>, key: string, v: T): void {
    if (m.size >= this.max) m.clear();
    m.set(key, v);
  }
}
