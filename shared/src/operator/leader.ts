// Leader election over an etcd lease, the usual etcd recipe: every candidate writes
// operator/leader/<its lease> under its lease; the candidate whose key was created first leads.
// A dead leader's lease expires (TTL), its key goes, and the next candidate in line sees the delete
// and leads, so takeover takes at most the TTL plus a watch delivery. The leader's writes carry a
// compare on its own key (guard()), so a leader that lost its lease without noticing yet cannot
// write anything.
import type { Compare, Kv, Lease } from '../kvstore/kv.ts';
import type { SessionLog } from '../kvstore/session.ts';

export interface ElectionOptions {
  kv: Kv;
  /** operator/leader/ of the cluster's layout. */
  prefix: string;
  /** This candidate's name (shown as the leader's value). */
  id: string;
  ttlSeconds: number;
  log?: SessionLog;
}

export interface Leadership {
  /** Compare to add to every write made as leader. */
  guard: Compare;
  /** Resolves when leadership is lost (lease gone or stop()). */
  lost: Promise<Error>;
}

export class Election {
  private stopped = false;
  private lease?: Lease;
  private wake?: () => void;

  constructor(private readonly o: ElectionOptions) {}

  /** Campaigns until elected (or stopped: rejects). */
  async campaign(): Promise<Leadership> {
    let delay = 200;
    while (!this.stopped) {
      try {
        const lease = await this.o.kv.grantLease(this.o.ttlSeconds);
        this.lease = lease;
        let onLost!: (e: Error) => void;
        const lost = new Promise<Error>((r) => {
          onLost = r;
        });
        lease.onLost((e) => {
          onLost(e);
          this.wake?.();
        });
        const key = `${this.o.prefix}${BigInt(lease.id).toString(16)}`;
        await this.o.kv.put(key, this.o.id, { lease: lease.id });
        delay = 200;
        for (;;) {
          if (this.stopped) throw new Error('election stopped');
          const { items, revision } = await this.o.kv.list(this.o.prefix);
          const mine = items.find((i) => i.key === key);
          if (!mine) throw new Error('candidate key vanished (lease expired)');
          const first = items.reduce((a, b) => (b.createRevision < a.createRevision ? b : a));
          if (first.key === key) {
            return { guard: { key, target: 'version', result: '>', value: 0 }, lost: lost.then((e) => e) };
          }
          // Wait for a delete under the prefix (the leader or someone ahead of us went), then look again.
          await new Promise<void>((resolve) => {
            const w = this.o.kv.watch(this.o.prefix, revision + 1, {
              events: (evs) => {
                if (evs.some((e) => e.type === 'delete')) {
                  void w.cancel();
                  resolve();
                }
              },
              broken: () => resolve(),
            });
            this.wake = () => {
              void w.cancel();
              resolve();
            };
            void lost.then(() => this.wake?.());
          });
        }
      } catch (e) {
        if (this.stopped) break;
        this.o.log?.warn({ err: (e as Error).message }, 'leader election: campaigning again');
        this.lease?.release();
        this.lease = undefined;
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 2_000);
      }
    }
    throw new Error('election stopped');
  }

  /** Who leads now (value of the first candidate key), for status output. */
  async leader(): Promise<string | undefined> {
    const { items } = await this.o.kv.list(this.o.prefix);
    if (!items.length) return undefined;
    return items.reduce((a, b) => (b.createRevision < a.createRevision ? b : a)).value;
  }

  /** Steps down: the lease is revoked so the next candidate leads at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.lease?.revoke().catch(() => this.lease?.release());
  }
}
