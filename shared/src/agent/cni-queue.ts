// The DELs membrane-cni queued because it could not reach the agent (down, restarting, or too slow
// to answer within the DEL deadline). Drained once before the API serves, then periodically: a DEL
// queued while the agent ran (a timeout) must not wait for the next restart to free its address.
import type { Core } from '../core.ts';
import type { Logger } from '../log.ts';
import { drainPendingDeletes, legacyPendingDeletesDir, pendingDeletesDir, type PendingDelete } from '../pending-deletes/index.ts';

export interface CniQueue {
  drain(): Promise<void>;
  /** Drains every `intervalMs` until the returned stop is called. */
  start(intervalMs: number): () => void;
}

export function cniQueue(o: { socket: string; stateDir: string; core: Core; log: Logger }): CniQueue {
  // Where plugins queue (next to the socket), and where plugins before that did (under stateDir).
  const dirs = [pendingDeletesDir(o.socket), legacyPendingDeletesDir(o.stateDir)];
  const deleteOne = async (e: PendingDelete) => {
    // A DEL queued before the attachment was created again (the runtime retried the ADD with the same
    // ids once the agent answered) is about the old one: deleting the new one would cut a live pod.
    const now = o.core.endpoints.get(e.containerId, e.ifName);
    if (now && Date.parse(now.createdAt) > Date.parse(e.queuedAt)) {
      o.log.info(
        { containerId: e.containerId, ifName: e.ifName, queuedAt: e.queuedAt, createdAt: now.createdAt },
        'queued DEL is older than the endpoint: dropped',
      );
      return;
    }
    await o.core.endpoints.delete(e.containerId, e.ifName);
  };
  let running: Promise<void> | null = null;
  const drainAll = async () => {
    for (const dir of dirs) {
      const report = await drainPendingDeletes(dir, deleteOne);
      if (report.deleted.length || report.failed.length || report.invalid.length) {
        o.log.info({ dir, ...report }, 'drained DELs queued by membrane-cni');
      }
    }
  };
  const drain = () => {
    running ??= drainAll().finally(() => {
      running = null;
    });
    return running;
  };
  return {
    drain,
    start(intervalMs) {
      const timer = setInterval(() => {
        drain().catch((err: unknown) => o.log.warn({ err }, 'cannot drain the DELs queued by membrane-cni; trying again later'));
      }, intervalMs);
      timer.unref();
      return () => clearInterval(timer);
    },
  };
}
