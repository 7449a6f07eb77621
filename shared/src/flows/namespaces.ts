// Namespaces that had flows recently (Hubble's GetNamespaces: the last hour, sorted by cluster and
// namespace). Read from the flow ring's endpoint records once a second and on request, so the event
// hot path does no extra work; a namespace whose flows were overwritten within the second between
// two reads can be missed, which at that rate means it is busy and seen again at once. Pure.
import type { SideRef } from './enrich.ts';
import type { FlowRing } from './ring.ts';
import type { Namespace } from './types.ts';

export const NAMESPACE_TTL_MS = 60 * 60 * 1000;

export class NamespaceTracker {
  private readonly lastSeen = new Map<string, { cluster: string; namespace: string; at: number }>();
  private readSeq = 0;

  constructor(
    private readonly ring: FlowRing,
    private readonly now: () => number = Date.now,
  ) {}

  /** Takes in the flows pushed since the last call. */
  update(): void {
    const at = this.now();
    let last: SideRef | undefined;
    this.readSeq = this.ring.forEachSide(this.readSeq, (side) => {
      if (side === last) return; // endpoint records are shared: consecutive flows repeat them
      last = side;
      const ns = side.endpoint.namespace;
      if (!ns) return;
      const cluster = side.endpoint.clusterName ?? '';
      this.lastSeen.set(`${cluster}/${ns}`, { cluster, namespace: ns, at });
    });
  }

  list(): Namespace[] {
    this.update();
    const cutoff = this.now() - NAMESPACE_TTL_MS;
    const out: Namespace[] = [];
    for (const [key, v] of this.lastSeen) {
      if (v.at < cutoff) {
        this.lastSeen.delete(key);
        continue;
      }
      out.push(v.cluster ? { cluster: v.cluster, namespace: v.namespace } : { namespace: v.namespace });
    }
    return out.sort((a, b) => (a.cluster ?? '').localeCompare(b.cluster ?? '') || a.namespace.localeCompare(b.namespace));
  }
}
