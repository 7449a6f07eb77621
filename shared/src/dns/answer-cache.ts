// The DNS answer cache in the datapath (bpf/lib/dns_cache.h): after the proxy has relayed an allowed
// UDP answer to a pod (its addresses already in the ipcache), the answer is stored in the dns_answers
// map under the query as sent, the endpoint and the server asked; the pod's next identical query is
// then answered by its tc program without reaching the proxy, until the answer's smallest TTL runs out.
// Like a node-local DNS cache: answers are served from the node until their TTL (the TTLs the pod
// sees count down). `--dns-cache off` turns it off.
//
// Correctness: an entry is stored only for a query the proxy allowed from that endpoint to that
// server, under the generation current when the proxy decided; the agent bumps the generation on
// every change of the policy maps or the ipcache (policyChanged), so an entry stored before a change
// is never served after it (the query goes to the proxy, which decides anew). Its expiry counts from
// the answer's arrival, before its addresses were learned, so it ends before they may expire. Only
// what the datapath can answer exactly is stored: a plain query (one question, a name of at most 128
// bytes, nothing else but an optional EDNS OPT record, IPv4) and a NOERROR answer of at most 512 bytes
// with 1-16 records besides OPT. The key holds the header flags (RD, AD, CD) and every byte after the
// header as sent: a query in other case, with other EDNS bits or flags goes to the proxy. Pure
// parsing here; the map writes in DnsAnswerCache.
import crypto from 'node:crypto';
import * as bpf from '../bpf/libbpf.ts';
import { sumPerCpuU64 } from '../maps/codec.ts';

export const KEY_SIZE = 172;
export const VALUE_SIZE = 640;
const NAME_MAX = 128;
const QUERY_MAX = 144;
const ANSWER_MAX = 512;
const TTLS = 16;
const OPT = 41;

export interface CacheableAnswer {
  /** The query's header bytes 2-3 (flags) as sent. */
  flags: Buffer;
  /** The query's bytes after the header as sent: the question, then an OPT record if any. */
  rest: Buffer;
  /** The length of the question's name (its bytes start the answer's question too). */
  nameLen: number;
  ttlOffsets: number[];
  ttls: number[];
  minTtl: number;
}

/** The length of the uncompressed wire name at `at` (root included), or -1. */
function plainNameLength(buf: Buffer, at: number): number {
  let i = at;
  while (i < buf.length) {
    const l = buf[i];
    if (l === 0) return i + 1 - at;
    if (l > 63) return -1;
    i += l + 1;
  }
  return -1;
}

/** Skips a possibly compressed name; the offset after it, or -1. */
function skipName(buf: Buffer, at: number): number {
  let i = at;
  while (i < buf.length) {
    const l = buf[i];
    if (l === 0) return i + 1;
    if ((l & 0xc0) === 0xc0) return i + 2 <= buf.length ? i + 2 : -1;
    if (l > 63) return -1;
    i += l + 1;
  }
  return -1;
}

/** The end of an OPT record (root owner) at `at` that ends the message, or -1. */
function optRecordEnd(buf: Buffer, at: number): number {
  if (at + 11 > buf.length || buf[at] !== 0 || buf.readUInt16BE(at + 1) !== OPT) return -1;
  const end = at + 11 + buf.readUInt16BE(at + 9);
  return end === buf.length ? end : -1;
}

/** What the datapath needs to answer `query` with `answer`, or undefined when it cannot answer it
 *  exactly (then every such query goes on to the proxy). */
export function cacheableAnswer(query: Buffer, answer: Buffer): CacheableAnswer | undefined {
  if (query.length < 17 || query.length > 12 + QUERY_MAX || answer.length < 17 || answer.length > ANSWER_MAX) return undefined;
  // A standard query (QR 0, opcode 0, TC 0), one question, at most an OPT record: what dns_cache.h accepts.
  const ar = query.readUInt16BE(10);
  if (query[2] & 0xfa || query.readUInt16BE(4) !== 1 || query.readUInt16BE(6) || query.readUInt16BE(8) || ar > 1)
    return undefined;
  const nameLen = plainNameLength(query, 12);
  if (nameLen < 1 || nameLen > NAME_MAX) return undefined;
  const qEnd = 12 + nameLen + 4;
  if (ar ? optRecordEnd(query, qEnd) < 0 : query.length !== qEnd) return undefined;
  // A response (QR 1, opcode 0, TC 0), NOERROR, the same single question, at least one answer record.
  if ((answer[2] & 0xfa) !== 0x80 || (answer[3] & 0x0f) !== 0 || answer.readUInt16BE(4) !== 1) return undefined;
  const an = answer.readUInt16BE(6);
  const records = an + answer.readUInt16BE(8) + answer.readUInt16BE(10);
  if (!an || records > TTLS + 1 || answer.length < qEnd) return undefined;
  const lower = (b: Buffer) => Buffer.from(b.toString('latin1').toLowerCase(), 'latin1');
  // The same question (a server may change the name's case: the stored answer gets the client's bytes).
  if (
    !lower(query.subarray(12, 12 + nameLen)).equals(lower(answer.subarray(12, 12 + nameLen))) ||
    !query.subarray(12 + nameLen, qEnd).equals(answer.subarray(12 + nameLen, qEnd))
  )
    return undefined;
  const ttlOffsets: number[] = [];
  const ttls: number[] = [];
  let at = qEnd;
  for (let r = 0; r < records; r++) {
    at = skipName(answer, at);
    if (at < 0 || at + 10 > answer.length) return undefined;
    if (answer.readUInt16BE(at) === OPT) {
      if (answer[at + 4]) return undefined; // an extended rcode: not NOERROR
    } else {
      const ttl = answer.readUInt32BE(at + 4);
      ttlOffsets.push(at + 4);
      ttls.push(ttl >= 0x80000000 ? 0 : ttl); // RFC 2181: the top bit set means zero
    }
    at += 10 + answer.readUInt16BE(at + 8);
  }
  if (at !== answer.length || !ttls.length || ttls.length > TTLS) return undefined;
  const minTtl = Math.min(...ttls);
  if (minTtl < 1) return undefined;
  return {
    flags: Buffer.from(query.subarray(2, 4)),
    rest: Buffer.from(query.subarray(12)),
    nameLen,
    ttlOffsets,
    ttls,
    minTtl,
  };
}

/** struct dns_cache_key (bpf/lib/dns_cache.h). IPv4 servers only. */
export function encodeKey(endpointId: number, serverIp: Buffer, serverPort: number, c: CacheableAnswer): Buffer {
  const k = Buffer.alloc(KEY_SIZE);
  k.writeUInt32LE(endpointId, 0);
  k[4] = serverIp.length === 4 ? 4 : 6;
  k[5] = c.rest.length;
  k.writeUInt16BE(serverPort, 6);
  serverIp.copy(k, 8);
  c.flags.copy(k, 24);
  c.rest.copy(k, 28);
  return k;
}

/** struct dns_cache_value. */
export function encodeValue(storedNs: bigint, generation: number, entryId: number, answer: Buffer, c: CacheableAnswer): Buffer {
  const v = Buffer.alloc(VALUE_SIZE);
  v.writeBigUInt64LE(storedNs, 0);
  v.writeBigUInt64LE(storedNs + BigInt(c.minTtl) * 1_000_000_000n, 8);
  v.writeUInt32LE(generation >>> 0, 16);
  v.writeUInt32LE(entryId >>> 0, 20);
  v.writeUInt16LE(answer.length, 24);
  v[26] = c.ttlOffsets.length;
  for (let i = 0; i < c.ttls.length; i++) {
    v.writeUInt16LE(c.ttlOffsets[i], 28 + 2 * i);
    v.writeUInt32LE(c.ttls[i], 60 + 4 * i);
  }
  answer.copy(v, 124);
  c.rest.copy(v, 124 + 12, 0, c.nameLen); // the question's name as the client asked it
  return v;
}

const ipv4Bytes = (ip: string): Buffer | undefined => {
  const m = /^(?:::ffff:)?(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(ip);
  return m ? Buffer.from([Number(m[1]), Number(m[2]), Number(m[3]), Number(m[4])]) : undefined;
};

/** The agent's side of the map: stores answers, and the generation that keeps them valid. */
export class DnsAnswerCache {
  /** Random at start: entries a previous agent stored under its generations are never served. */
  private gen = crypto.randomBytes(4).readUInt32LE(0);
  private nextId = 1;
  private readonly config = Buffer.alloc(8);

  constructor(
    private readonly fds: { cache: number; config: number; hits: number },
    readonly enabled: boolean,
    private readonly cpus: number,
  ) {
    this.writeConfig();
  }

  get generation(): number {
    return this.gen;
  }

  /** Every entry stored before this is invalid from now on (before any query sees the new maps'
   *  verdict by another path, as the caller runs this right after changing them). */
  bump(): void {
    this.gen = (this.gen + 1) >>> 0;
    this.writeConfig();
  }

  /** Queries the datapath answered (since the map was created). */
  hits(): number {
    const v = bpf.mapLookup(this.fds.hits, 'dns_cache_hits', Buffer.alloc(4), 8 * this.cpus);
    return v ? Number(sumPerCpuU64(v, this.cpus)) : 0;
  }

  private writeConfig(): void {
    this.config.writeUInt32LE(this.enabled ? 1 : 0, 0);
    this.config.writeUInt32LE(this.gen, 4);
    bpf.mapUpdate(this.fds.config, 'dns_cache_config', Buffer.alloc(4), this.config);
  }

  /** Stores the answer the proxy just relayed: the entry's id (in the datapath's DNS_CACHED events),
   *  or 0 when the datapath could not answer it exactly.
   *  `storedNs`: CLOCK_MONOTONIC (process.hrtime) when the answer arrived, before it was learned. */
  store(
    endpointId: number,
    server: { ip: string; port: number },
    query: Buffer,
    answer: Buffer,
    generation: number,
    storedNs: bigint,
  ): number {
    if (!this.enabled || generation !== this.gen) return 0;
    const ip = ipv4Bytes(server.ip);
    if (!ip) return 0;
    const c = cacheableAnswer(query, answer);
    if (!c) return 0;
    const id = this.nextId;
    this.nextId = (this.nextId % 0xffffffff) + 1;
    bpf.mapUpdate(
      this.fds.cache,
      'dns_answers',
      encodeKey(endpointId, ip, server.port, c),
      encodeValue(storedNs, generation, id, answer, c),
    );
    return id;
  }
}
