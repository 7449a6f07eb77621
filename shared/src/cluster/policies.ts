// Policies shared through the cluster store: the policy backend of an agent in cluster mode.
// Each policy is its own key (policies/records/<name>: the normalized form and the document it came
// from); policies/meta holds the cluster revision and the next policy number. A commit is one
// transaction guarded by the meta value the writer planned against, so two nodes importing at once
// never interleave: the loser gets PolicyConflictError, reads again and plans again. Every agent,
// the importing one included, applies what the watch delivers.
import zlib from 'node:zlib';
import { decode, encode, type Layout, type PolicyMeta } from '../kvstore/layout.ts';
import { PrefixMirror } from '../kvstore/mirror.ts';
import type { Op } from '../kvstore/kv.ts';
import type { Session, SessionLog } from '../kvstore/session.ts';
import { PolicyConflictError, type PersistedPolicies, type PolicyBackend } from '../policy/repository.ts';
import type { PolicyRecord } from '../policy/types.ts';

type Item = { meta: PolicyMeta; text: string } | { record: PolicyRecord };

export interface ClusterPoliciesOptions {
  session: Session;
  layout: Layout;
  node: string;
  /** Another node (or this one, through the watch) changed the set. */
  onRemoteChange(state: PersistedPolicies): void | Promise<void>;
  log?: SessionLog;
}

export class ClusterPolicies implements PolicyBackend {
  readonly mirror: PrefixMirror<Item>;
  /** The meta text the current state was read or written with (what a commit compares against). */
  private metaText: string | undefined;
  private metaRevision = 0;

  constructor(private readonly o: ClusterPoliciesOptions) {
    const L = o.layout;
    this.mirror = new PrefixMirror<Item>(o.session.kv, L.policies, {
      decode: (v, key) => {
        if (key === 'meta') {
          const meta = decode<PolicyMeta>(v);
          return meta && Number.isInteger(meta.revision) ? { meta, text: v } : undefined;
        }
        const record = key.startsWith('records/') ? decodeRecord(v) : undefined;
        return record?.name && record.policy ? { record } : undefined;
      },
      onChange: () => this.changed(),
      log: o.log,
    });
  }

  start(): Promise<void> {
    return this.mirror.start();
  }
  stop(): Promise<void> {
    return this.mirror.stop();
  }

  /** The set as the mirror holds it. */
  current(): PersistedPolicies {
    let meta: PolicyMeta | undefined;
    const records: PolicyRecord[] = [];
    for (const it of this.mirror.items.values()) {
      if ('meta' in it) meta = it.meta;
      else records.push(it.record);
    }
    records.sort((a, b) => a.number - b.number);
    return { revision: meta?.revision ?? 0, nextNumber: meta?.nextNumber ?? 1, records };
  }

  private metaItem(): { meta: PolicyMeta; text: string } | undefined {
    const it = this.mirror.items.get('meta');
    return it && 'meta' in it ? it : undefined;
  }

  private async changed(): Promise<void> {
    const m = this.metaItem();
    // Records of a transaction arrive with its meta; a set without meta is an empty cluster.
    if (m && m.meta.revision < this.metaRevision) return;
    this.metaText = m?.text;
    this.metaRevision = m?.meta.revision ?? 0;
    await this.o.onRemoteChange(this.current());
  }

  // ---- PolicyBackend ---------------------------------------------------------------------------

  async load(): Promise<PersistedPolicies | undefined> {
    await this.mirror.synced();
    const m = this.metaItem();
    this.metaText = m?.text;
    this.metaRevision = m?.meta.revision ?? 0;
    return this.current();
  }

  async save(prev: PersistedPolicies, next: PersistedPolicies): Promise<void> {
    const L = this.o.layout;
    if (prev.revision !== this.metaRevision)
      throw new PolicyConflictError(
        `the cluster's policies are at revision ${this.metaRevision}, this change was planned on ${prev.revision}`,
      );
    const meta: PolicyMeta = {
      revision: next.revision,
      nextNumber: next.nextNumber,
      updatedAt: new Date().toISOString(),
      updatedBy: this.o.node,
    };
    const metaText = encode(meta);
    const before = new Map(prev.records.map((r) => [r.name, r]));
    const ops: Op[] = [];
    for (const r of next.records) {
      const old = before.get(r.name);
      if (!old || old.revision !== r.revision || old.number !== r.number)
        ops.push({ type: 'put', key: L.policyRecord(r.name), value: encodeRecord(r) });
      before.delete(r.name);
    }
    for (const name of before.keys()) ops.push({ type: 'delete', key: L.policyRecord(name) });
    ops.push({ type: 'put', key: L.policyMeta, value: metaText });
    const guard =
      this.metaText === undefined
        ? { key: L.policyMeta, target: 'version' as const, result: '=' as const, value: 0 }
        : { key: L.policyMeta, target: 'value' as const, result: '=' as const, value: this.metaText };
    const res = await this.o.session.kv.txn([guard], ops);
    this.o.session.contact();
    if (!res.succeeded) throw new PolicyConflictError("another node changed the cluster's policies first");
    this.metaText = metaText;
    this.metaRevision = next.revision;
  }

  /** Reads the set straight from the store (after a conflict, before the watch catches up). */
  async reload(): Promise<PersistedPolicies> {
    const L = this.o.layout;
    const { items } = await this.o.session.kv.list(L.policies);
    let meta: PolicyMeta | undefined;
    let metaText: string | undefined;
    const records: PolicyRecord[] = [];
    for (const it of items) {
      const k = it.key.slice(L.policies.length);
      if (k === 'meta') {
        meta = decode<PolicyMeta>(it.value);
        metaText = it.value;
      } else {
        const r = decodeRecord(it.value);
        if (r) records.push(r);
      }
    }
    this.metaText = metaText;
    this.metaRevision = meta?.revision ?? 0;
    records.sort((a, b) => a.number - b.number);
    return { revision: meta?.revision ?? 0, nextNumber: meta?.nextNumber ?? 1, records };
  }
}

/** Records above this are stored gzipped: etcd refuses a request over 1.5 MiB (--max-request-bytes),
 *  and a policy of 10,000 rules with its source document is about 2.7 MB of JSON (~5% gzipped). */
export const RECORD_GZIP_ABOVE = 64 * 1024;
const GZIP_PREFIX = 'gz:';

/** A policy record as its value: JSON, or "gz:" + base64 of the gzipped JSON when it is large. */
export function encodeRecord(r: PolicyRecord): string {
  const json = encode(r);
  return json.length > RECORD_GZIP_ABOVE ? GZIP_PREFIX + zlib.gzipSync(json).toString('base64') : json;
}

export function decodeRecord(v: string): PolicyRecord | undefined {
  if (!v.startsWith(GZIP_PREFIX)) return decode<PolicyRecord>(v);
  try {
    return decode<PolicyRecord>(zlib.gunzipSync(Buffer.from(v.slice(GZIP_PREFIX.length), 'base64')));
  } catch {
    return undefined;
  }
}
