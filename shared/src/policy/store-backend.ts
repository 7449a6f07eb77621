// The node's policies in its own store (the single-node default; cluster mode keeps them in etcd,
// cluster/policies.ts). Each policy is its own key, policy/records/<name>, next to policy/meta
// ({revision, nextNumber}); a change writes the records it created, replaced or deleted and the meta,
// as one store batch: one journal record, so a crash keeps the whole change or none of it, and one
// policy changed among 10,000 rules writes that policy, not the set (it used to be one 2.7 MB key,
// whose write and fdatasync were ~90 % of the API round trip).
// The layout before this one (the whole set under policy/repository) is migrated on first start, in
// one batch too; a store that cannot take the batch yet (a full disk) keeps the old layout until a
// later start can. A stored record that is not a policy record is reported and left where it is; the
// others load.
import { rawJson, type Store, type StoreChange } from '../store/index.ts';
import type { EngineLog } from './engine-types.ts';
import { policySetJson, recordJson } from './record-json.ts';
import type { PersistedPolicies, PolicyBackend } from './repository.ts';
import { MAX_POLICY_NUMBER } from './rule-id.ts';
import type { PolicyRecord } from './types.ts';

export const POLICY_META_KEY = 'policy/meta';
export const POLICY_RECORDS = 'policy/records';
/** Where the whole set was kept before (read once, to migrate it). */
export const OLD_POLICY_KEY = 'policy/repository';

/** Policy names hold "/" (namespace/name): encoded, a name is one key segment. */
export const policyRecordKey = (name: string) => `${POLICY_RECORDS}/${encodeURIComponent(name)}`;

interface Meta {
  revision: number;
  nextNumber: number;
}

export interface StoredPolicyProblem {
  key: string;
  reason: string;
}

/** The policy name a record key stands for. */
export const policyNameOfKey = (key: string) => decodeURIComponent(key.slice(POLICY_RECORDS.length + 1));

export interface StorePolicyBackend extends PolicyBackend {
  /** Stored records load() could not use (reported in the log too) and no change has replaced yet. */
  readonly problems: StoredPolicyProblem[];
  /** Deletes an unusable stored record (the operator's "delete it" instead of importing it again). */
  forget(key: string): Promise<void>;
}

export function storePolicyBackend(store: Store, log?: EngineLog): StorePolicyBackend {
  const problems: StoredPolicyProblem[] = [];
  // True while the set is still kept the old way (a migration that could not be written yet).
  let oldLayout = false;

  async function load(): Promise<PersistedPolicies | undefined> {
    const meta = await store.get<Meta>(POLICY_META_KEY);
    if (meta === undefined) return migrate();
    const records: PolicyRecord[] = [];
    const numbers = new Set<number>();
    for (const { key, value } of await store.list<unknown>(POLICY_RECORDS)) {
      const reason =
        recordProblem(key, value) ?? (numbers.has((value as PolicyRecord).number) ? 'its number is taken' : undefined);
      if (reason) {
        problems.push({ key, reason });
        log?.warn({ key, reason }, 'a stored policy is not usable: left in the store, the others are loaded');
        continue;
      }
      numbers.add((value as PolicyRecord).number);
      records.push(value as PolicyRecord);
    }
    records.sort((a, b) => a.number - b.number);
    return { revision: meta.revision, nextNumber: meta.nextNumber, records };
  }

  async function migrate(): Promise<PersistedPolicies | undefined> {
    const old = await store.get<PersistedPolicies>(OLD_POLICY_KEY);
    if (old === undefined) return undefined;
    const changes: StoreChange[] = [
      ...old.records.map((r): StoreChange => ({ op: 'put', key: policyRecordKey(r.name), value: r })),
      { op: 'put', key: POLICY_META_KEY, value: { revision: old.revision, nextNumber: old.nextNumber } },
      { op: 'del', key: OLD_POLICY_KEY },
    ];
    try {
      if (!store.batch) throw new Error('this store cannot write several keys at once');
      await store.batch(changes);
      log?.info({ policies: old.records.length }, 'policies moved to one store key each');
    } catch (err) {
      oldLayout = true;
      log?.warn({ err }, 'cannot move the policies to one store key each yet; kept as they are until a later start');
    }
    return old;
  }

  async function save(prev: PersistedPolicies, next: PersistedPolicies): Promise<void> {
    if (oldLayout || !store.batch) return store.put(OLD_POLICY_KEY, policySetJson(next));
    // Records are never changed in place: a record object the previous set holds is stored already.
    const had = new Set(prev.records);
    const names = new Set<string>();
    const changes: StoreChange[] = [];
    for (const r of next.records) {
      names.add(r.name);
      if (!had.has(r)) changes.push({ op: 'put', key: policyRecordKey(r.name), value: rawJson(recordJson(r)) });
    }
    const freeing = changes.length === 0;
    for (const r of prev.records) if (!names.has(r.name)) changes.push({ op: 'del', key: policyRecordKey(r.name) });
    changes.push({ op: 'put', key: POLICY_META_KEY, value: { revision: next.revision, nextNumber: next.nextNumber } });
    // Deletions only: the journal lets them use the room it keeps for deletions (a full disk).
    await store.batch(changes, { freeing });
    // A policy imported again under the name of one that could not be loaded replaced it.
    for (let i = problems.length - 1; i >= 0; i--) if (changes.some((c) => c.key === problems[i].key)) problems.splice(i, 1);
  }

  async function forget(key: string): Promise<void> {
    await store.delete(key);
    for (let i = problems.length - 1; i >= 0; i--) if (problems[i].key === key) problems.splice(i, 1);
  }

  return { load, save, problems, forget };
}

/** Why a stored value is not a policy record under this key, or undefined when it is one. */
function recordProblem(key: string, v: unknown): string | undefined {
  const r = v as PolicyRecord;
  if (typeof r !== 'object' || r === null || Array.isArray(r)) return 'not a policy record';
  if (typeof r.name !== 'string' || policyRecordKey(r.name) !== key) return 'its name does not match its key';
  if (!Number.isInteger(r.number) || r.number < 1 || r.number > MAX_POLICY_NUMBER) return 'no valid policy number';
  if (!Number.isInteger(r.revision)) return 'no valid revision';
  if (typeof r.policy !== 'object' || r.policy === null || !Array.isArray(r.policy.specs)) return 'no policy in it';
  return undefined;
}
