// What a deleted endpoint leaves behind, removed after its DEL has answered: the host veth (the
// kernel's teardown waits for RCU grace periods, ~20-25 ms of a DEL otherwise) and the conntrack
// entries bound to its endpoint id. By then the DEL has already made the endpoint unable to send or
// receive (its datapath config is gone, so both programs drop everything: bpf/endpoint.c) and freed
// its addresses durably; the "to reap" record is written in the same store batch, so an agent killed
// before reaping resumes at its next start. Every step is idempotent.
//
// Why the address is safely reusable before the flush: conntrack entries are bound to endpoint ids
// (bpf/lib/ct.h matches owner and peer ids), and the id stays reserved until its entries are gone,
// so a new endpoint with the old one's address never matches the old one's flows.
import type { Store } from '../store/index.ts';
import type { Netlink } from '../netlink/index.ts';
import type { Datapath } from '../bpf/datapath.ts';
import type { Endpoint } from '../types.ts';
import { keyOf } from './recipe.ts';

export const REAP_PREFIX = 'reap';

export interface ReapRecord {
  /** The endpoint id (reserved until reaped). */
  id: number;
  endpoint: string;
  hostIfName: string;
  hostIfIndex: number;
  deletedAt: string;
}

export interface ReaperDeps {
  store: Store;
  host: Pick<Netlink, 'linkByIndex' | 'linkDel'>;
  datapath: Pick<Datapath, 'flushConntrackOf' | 'releaseDetached'>;
  /** Does a live endpoint use this host interface name (a re-ADD of the same attachment)? */
  inUse: (hostIfName: string) => boolean;
  /** The id may be handed out again. */
  released: (id: number) => void;
  log?: { warn(o: object, msg: string): void };
  /** How long deleted endpoints wait before they are reaped (a test holds them to probe the gap). */
  delayMs?: number;
}

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** How long a failed reap waits before it is tried again. */
const RETRY_MS = 5_000;

export class Reaper {
  private readonly queue = new Map<number, ReapRecord>();
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;
  private closed = false;

  constructor(private readonly d: ReaperDeps) {}

  /** The durable record; the caller awaits it together with the endpoint's own deletion. */
  record(ep: Endpoint): Promise<void> {
    const rec = recordOf(ep);
    this.queue.set(rec.id, rec);
    return this.d.store.put(`${REAP_PREFIX}/${rec.id}`, rec).catch((e) => {
      this.queue.delete(rec.id);
      throw e;
    });
  }

  /** The endpoint was not deleted after all (its own deletion failed): nothing to reap. */
  async cancel(id: number): Promise<void> {
    this.queue.delete(id);
    await this.d.store.delete(`${REAP_PREFIX}/${id}`).catch(() => undefined);
  }

  /** Reaps at once, without a record: when the record could not be written (a full state disk, where
   *  deletions have reserved room and new data does not), the DEL pays for the teardown itself. */
  reapNow(ep: Endpoint): void {
    const rec = recordOf(ep);
    try {
      this.removeLink(rec);
      this.d.datapath.flushConntrackOf([rec.id]);
      this.d.released(rec.id);
    } catch (err) {
      // Its traffic is dropped already; the id stays taken (its flows cannot match anyone else).
      this.d.log?.warn({ err, endpoint: rec.endpoint }, 'cannot reap a deleted endpoint: its interface or flows stay');
    }
  }

  private removeLink(rec: ReapRecord): void {
    // By index and name: the index may belong to a newer interface, the name to a re-ADD.
    const link = this.d.host.linkByIndex(rec.hostIfIndex);
    if (link && link.name === rec.hostIfName && !this.d.inUse(rec.hostIfName)) this.d.host.linkDel(rec.hostIfIndex);
    // The kernel detached its programs' links with it; their pins go (a live link is left alone).
    this.d.datapath.releaseDetached(rec.hostIfIndex);
  }

  /** Records a previous run left (it was killed before reaping): their ids are still taken. */
  async resume(): Promise<number[]> {
    for (const { value } of await this.d.store.list<ReapRecord>(REAP_PREFIX)) {
      if (Number.isInteger(value?.id)) this.queue.set(value.id, value);
    }
    return [...this.queue.keys()];
  }

  pending(): number {
    return this.queue.size;
  }

  /** Reap soon (after the current DEL's answer is on its way). */
  kick(delayMs = this.d.delayMs ?? 0): void {
    if (this.closed || this.timer || !this.queue.size) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.reapAll();
    }, delayMs);
    this.timer.unref();
  }

  /** Everything queued, now; resolves when done (failures stay queued, retried later). */
  reapAll(): Promise<void> {
    this.running ??= this.reapBatch().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async reapBatch(): Promise<void> {
    const batch = [...this.queue.values()];
    if (!batch.length) return;
    const done: ReapRecord[] = [];
    for (const [i, rec] of batch.entries()) {
      // Each removal holds the event loop while the kernel tears the veth down (~20 ms): requests
      // that came in meanwhile (the next ADD or DEL) go first.
      if (i > 0) await nextTurn();
      try {
        this.removeLink(rec);
        done.push(rec);
      } catch (err) {
        this.d.log?.warn(
          { err, endpoint: rec.endpoint, hostIfName: rec.hostIfName },
          'cannot remove the interface of a deleted endpoint yet',
        );
      }
    }
    let flushed = done;
    try {
      // One walk of the table for the whole batch.
      if (done.length) this.d.datapath.flushConntrackOf(done.map((r) => r.id));
    } catch (err) {
      this.d.log?.warn({ err, ids: done.map((r) => r.id) }, 'conntrack flush of deleted endpoints failed');
      flushed = [];
    }
    await Promise.all(
      flushed.map(async (rec) => {
        try {
          await this.d.store.delete(`${REAP_PREFIX}/${rec.id}`);
          this.queue.delete(rec.id);
          this.d.released(rec.id);
        } catch (err) {
          this.d.log?.warn({ err, endpoint: rec.endpoint }, 'cannot drop the reap record yet');
        }
      }),
    );
    // DELs that came in meanwhile go soon; what failed here waits a little.
    const tried = new Set(batch.map((r) => r.id));
    if (!this.closed && this.queue.size) this.kick([...this.queue.keys()].some((id) => !tried.has(id)) ? undefined : RETRY_MS);
  }

  /** Stops the timer after reaping what is queued (the agent stops: nothing left for the next start). */
  async close(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
    await this.reapAll();
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}

function recordOf(ep: Endpoint): ReapRecord {
  return {
    id: ep.id,
    endpoint: keyOf(ep),
    hostIfName: ep.hostIfName,
    hostIfIndex: ep.hostIfIndex,
    deletedAt: new Date().toISOString(),
  };
}
