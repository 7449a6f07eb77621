// DNS records from a proxy worker thread to the agent's thread, flat. postMessage clones an object
// field by field, its keys included, and a record is eight objects: two per query cost the worker and
// the agent more than the relay itself did (bench:dns). Here a record is a run of primitives in one
// array, and the objects many records share (the verdict, the answer, the question types) are sent
// once per batch and referred to by index. Pure.
import type { Answer } from './message.ts';
import type { DnsDecision, DnsRecord } from './types.ts';

export interface RecordBatch {
  /** FIELDS values per record. */
  flat: (string | number | boolean | undefined)[];
  /** Objects the records refer to (decisions, answers, type lists), each once. */
  shared: unknown[];
}

const FIELDS = 17;
const KIND = ['query', 'response'] as const;
const VERDICT = ['forwarded', 'refused', 'error'] as const;

export class RecordBatcher {
  private flat: RecordBatch['flat'] = [];
  private shared: unknown[] = [];
  private refs = new Map<unknown, number>();

  get size(): number {
    return this.flat.length / FIELDS;
  }

  private ref(o: unknown): number {
    if (o === undefined) return -1;
    let i = this.refs.get(o);
    if (i === undefined) {
      i = this.shared.push(o) - 1;
      this.refs.set(o, i);
    }
    return i;
  }

  add(r: DnsRecord): void {
    this.flat.push(
      r.kind === 'query' ? 0 : 1,
      r.timeMs,
      r.proto,
      r.src.ip,
      r.src.port,
      r.dst.ip,
      r.dst.port,
      r.query.id,
      r.query.name,
      this.ref(r.query.types),
      r.query.rd,
      this.ref(r.decision),
      VERDICT.indexOf(r.verdict),
      r.reason,
      this.ref(r.answer),
      r.latencyNs,
      r.learnNs,
    );
  }

  /** The batch so far; the batcher starts empty again. */
  take(): RecordBatch {
    const b = { flat: this.flat, shared: this.shared };
    this.flat = [];
    this.shared = [];
    this.refs.clear();
    return b;
  }
}

export function readBatch(b: RecordBatch, each: (r: DnsRecord) => void): void {
  const f = b.flat;
  const obj = <T>(i: unknown): T | undefined => (typeof i === 'number' && i >= 0 ? (b.shared[i] as T) : undefined);
  for (let at = 0; at + FIELDS <= f.length; at += FIELDS) {
    each({
      kind: KIND[f[at] as number],
      timeMs: f[at + 1] as number,
      proto: f[at + 2] as DnsRecord['proto'],
      src: { ip: f[at + 3] as string, port: f[at + 4] as number },
      dst: { ip: f[at + 5] as string, port: f[at + 6] as number },
      query: {
        id: f[at + 7] as number,
        name: f[at + 8] as string,
        types: obj<string[]>(f[at + 9]) ?? [],
        rd: f[at + 10] as boolean,
      },
      decision: obj<DnsDecision>(f[at + 11]) ?? { allowed: false, identity: 0, peerIdentity: 0, ruleId: 0 },
      verdict: VERDICT[f[at + 12] as number],
      reason: f[at + 13] as string | undefined,
      answer: obj<Answer>(f[at + 14]),
      latencyNs: f[at + 15] as number | undefined,
      learnNs: f[at + 16] as number | undefined,
    });
  }
}
