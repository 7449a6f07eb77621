// Named policies with revisions. Changes are planned (pure) and committed separately, so the caller
// can apply a plan to the datapath first and throw it away if that fails. Where the set is kept is
// the backend's business: one key per policy in the node's store, a change written as one batch (a
// crash leaves the old set or the new set, never half; store-backend.ts), or the cluster store (cluster/policies.ts), where a commit is one transaction
// that fails with PolicyConflictError when another node changed the set first.
import type { Store } from '../store/index.ts';
import { samePolicy } from './fingerprint.ts';
import { noteReplaced } from './rule-edits.ts';
import { MAX_POLICY_NUMBER } from './rule-id.ts';
import { storePolicyBackend } from './store-backend.ts';
import type { Policy, PolicyRecord } from './types.ts';

export interface PersistedPolicies {
  revision: number;
  nextNumber: number;
  records: PolicyRecord[];
}
type Persisted = PersistedPolicies;

export interface PolicyBackend {
  load(): Promise<PersistedPolicies | undefined>;
  /** Durable when it resolves; rejects with nothing changed (PolicyConflictError: `prev` is stale). */
  save(prev: PersistedPolicies, next: PersistedPolicies): Promise<void>;
}

/** Another writer changed the set since it was read: read again, plan again. */
export class PolicyConflictError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PolicyConflictError';
  }
}

export type ChangeKind = 'created' | 'updated' | 'unchanged' | 'deleted';

export interface Plan {
  records: PolicyRecord[];
  revision: number;
  nextNumber: number;
  changes: { name: string; change: ChangeKind; revision: number }[];
}

export class PolicyRepository {
  private state: Persisted;

  private constructor(
    private readonly backend: PolicyBackend,
    state: Persisted,
  ) {
    this.state = state;
  }

  static async open(storeOrBackend: Store | PolicyBackend): Promise<PolicyRepository> {
    const backend = 'save' in storeOrBackend ? storeOrBackend : storePolicyBackend(storeOrBackend);
    const saved = await backend.load();
    return new PolicyRepository(backend, saved ?? { revision: 0, nextNumber: 1, records: [] });
  }

  /** The set as another writer left it (cluster store change). false when it is not newer. */
  replace(next: Persisted): boolean {
    if (next.revision <= this.state.revision && next.revision !== 0) return false;
    this.state = { ...next, records: [...next.records].sort((a, b) => a.number - b.number) };
    return true;
  }

  get revision(): number {
    return this.state.revision;
  }
  list(): PolicyRecord[] {
    return this.state.records;
  }
  get(name: string): PolicyRecord | undefined {
    return this.state.records.find((r) => r.name === name);
  }
  byNumber(n: number): PolicyRecord | undefined {
    return this.state.records.find((r) => r.number === n);
  }

  /** Add or replace policies by name. `sources[i]` is the document policies[i] came from. */
  planImport(policies: Policy[], sources: unknown[], now = new Date()): Plan {
    const records = [...this.state.records];
    const changes: Plan['changes'] = [];
    let nextNumber = this.state.nextNumber;
    let changed = false;
    const used = new Set(records.map((r) => r.number));
    policies.forEach((policy, i) => {
      const idx = records.findIndex((r) => r.name === policy.name);
      const prev = idx >= 0 ? records[idx] : undefined;
      if (prev && samePolicy(prev.policy, policy)) {
        changes.push({ name: policy.name, change: 'unchanged', revision: prev.revision });
        return;
      }
      changed = true;
      // What is worked out per policy follows from the replaced one's and the rules that changed.
      if (prev) noteReplaced(policy, prev.policy);
      let number = prev?.number;
      if (number === undefined) {
        ({ number, next: nextNumber } = freeNumber(used, nextNumber));
        used.add(number);
      }
      const rec: PolicyRecord = {
        name: policy.name,
        revision: (prev?.revision ?? 0) + 1,
        number,
        policy,
        source: sources[i] ?? null,
        updatedAt: now.toISOString(),
      };
      if (prev) records[idx] = rec;
      else records.push(rec);
      changes.push({ name: policy.name, change: prev ? 'updated' : 'created', revision: rec.revision });
    });
    return { records, changes, nextNumber, revision: this.state.revision + (changed ? 1 : 0) };
  }

  /** Delete by name (names not found are reported as unknown), or every policy with all. */
  planDelete(names: string[] | 'all'): Plan & { unknown: string[] } {
    const gone = names === 'all' ? this.state.records.map((r) => r.name) : names.filter((n) => this.get(n));
    const unknown = names === 'all' ? [] : names.filter((n) => !this.get(n));
    const records = this.state.records.filter((r) => !gone.includes(r.name));
    return {
      records,
      unknown,
      nextNumber: this.state.nextNumber,
      revision: this.state.revision + (gone.length ? 1 : 0),
      changes: gone.map((name) => ({ name, change: 'deleted' as const, revision: this.get(name)!.revision })),
    };
  }

  /** Durable when it resolves; on failure nothing changed. */
  async commit(plan: Plan): Promise<void> {
    if (plan.revision === this.state.revision) return;
    const next: Persisted = { revision: plan.revision, nextNumber: plan.nextNumber, records: plan.records };
    await this.backend.save(this.state, next);
    this.state = next;
  }
}

function freeNumber(used: Set<number>, hint: number): { number: number; next: number } {
  for (let i = 0; i < MAX_POLICY_NUMBER; i++) {
    const n = ((hint - 1 + i) % MAX_POLICY_NUMBER) + 1;
    if (!used.has(n)) return { number: n, next: (n % MAX_POLICY_NUMBER) + 1 };
  }
  throw new Error(`no policy number left (${MAX_POLICY_NUMBER} policies)`);
}
