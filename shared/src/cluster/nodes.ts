// Nodes of the cluster: this agent's own record (under its lease, so it vanishes when the agent dies
// and stays away) and a mirror of everyone's, for `membrane node list` and for part 2's overlay
// (underlay address, pod CIDRs, node id). Also the wait for the pod CIDRs the operator hands out.
import { decode, encode, type Layout, type NodeRecord, type PodCidrAllocation } from '../kvstore/layout.ts';
import { PrefixMirror } from '../kvstore/mirror.ts';
import type { Session, SessionLog } from '../kvstore/session.ts';

export interface NodeView extends NodeRecord {
  /** Milliseconds since the record was last written (the agent refreshes it while alive). */
  lastSeenMs: number;
}

export class ClusterNodes {
  readonly mirror: PrefixMirror<NodeRecord>;
  private readonly listeners: ((nodes: Map<string, NodeRecord>) => void)[] = [];

  constructor(
    private readonly session: Session,
    private readonly L: Layout,
    log?: SessionLog,
  ) {
    this.mirror = new PrefixMirror<NodeRecord>(session.kv, L.nodes, {
      decode: (v, key) => {
        const r = decode<NodeRecord>(v);
        return r && r.name === key ? r : undefined;
      },
      onChange: () => {
        for (const fn of this.listeners) fn(this.mirror.items);
      },
      log,
    });
  }

  start(): Promise<void> {
    return this.mirror.start();
  }
  stop(): Promise<void> {
    return this.mirror.stop();
  }

  /** Called after every change with all nodes (part 2: routes and tunnel endpoints). */
  onChange(fn: (nodes: Map<string, NodeRecord>) => void): void {
    this.listeners.push(fn);
  }

  /** Publishes (or refreshes) this node's record under the session's lease. */
  publish(record: NodeRecord): void {
    this.session.set(this.L.node(record.name), encode(record));
  }

  list(): NodeView[] {
    const now = Date.now();
    return [...this.mirror.items.values()]
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((n) => ({
        ...n,
        lastSeenMs: Math.max(0, now - Date.parse(n.updatedAt || n.registeredAt)),
      }));
  }
}

/**
 * The pod CIDRs the operator allocated to `node`. Polls up to `timeoutMs`; the error says
 * what to check, since the usual cause is no operator running with --cluster-pool.
 */
export async function waitForPodCidrs(session: Session, L: Layout, node: string, timeoutMs: number): Promise<PodCidrAllocation> {
  const key = L.podCidrNode(node);
  const deadline = Date.now() + timeoutMs;
  let lastErr: string | undefined;
  while (Date.now() < deadline) {
    try {
      const it = await session.kv.get(key);
      session.contact();
      const a = it && decode<PodCidrAllocation>(it.value);
      if (a && (a.ipv4 || a.ipv6)) return a;
    } catch (e) {
      lastErr = (e as Error).message;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(
    `no pod CIDR was allocated to node "${node}" within ${Math.round(timeoutMs / 1000)} s ` +
      `(is membrane-operator running for this cluster with --cluster-pool?)${lastErr ? `; last store error: ${lastErr}` : ''}`,
  );
}
