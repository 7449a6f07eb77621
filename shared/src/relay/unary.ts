// The relay's unary requests (GetNodes, GetNamespaces, ServerStatus): every node asked within 2 s,
// the answers combined; a node that does not answer is listed as unavailable.
import type { Namespace, ObserverNode, ServerStatus } from '../flows/types.ts';
import { observerServerName, type PeerSet } from './peers.ts';
import { RELAY_NAME } from './streams.ts';

export interface AggregateOptions {
  peers: PeerSet;
  cluster: string;
  version: string;
}

export async function nodes(o: AggregateOptions): Promise<ObserverNode[]> {
  return Promise.all(
    o.peers.list().map(async (p) => {
      const tls = p.tls ? { enabled: true, serverName: observerServerName(o.cluster, p.name) } : {};
      try {
        const [n] = await p.client.nodes(2_000);
        o.peers.answered(p);
        return { ...n, name: p.name, address: p.address, state: 'NODE_CONNECTED' as const, tls };
      } catch (e) {
        o.peers.failed(p, e as Error);
        return { name: p.name, address: p.address, state: 'NODE_UNAVAILABLE' as const, tls };
      }
    }),
  );
}

export async function namespaces(o: AggregateOptions): Promise<Namespace[]> {
  const all = await Promise.all(
    o.peers
      .list()
      .filter((p) => p.state === 'NODE_CONNECTED')
      .map((p) => p.client.namespaces(2_000).catch(() => [])),
  );
  const seen = new Map<string, Namespace>();
  for (const n of all.flat()) seen.set(`${n.cluster ?? ''}/${n.namespace}`, n);
  return [...seen.values()].sort(
    (a, b) => (a.cluster ?? '').localeCompare(b.cluster ?? '') || a.namespace.localeCompare(b.namespace),
  );
}

export async function status(o: AggregateOptions, startedAtNs: bigint): Promise<ServerStatus> {
  const peers = o.peers.list();
  const answers = await Promise.all(
    peers.map((p) =>
      p.client.status(2_000).then(
        (s) => {
          o.peers.answered(p);
          return s;
        },
        (e: Error) => {
          o.peers.failed(p, e);
          return undefined;
        },
      ),
    ),
  );
  const ok = answers.filter((a): a is ServerStatus => !!a);
  const unavailable = peers.filter((_, i) => !answers[i]).map((p) => p.name);
  const sum = (f: (s: ServerStatus) => number) => ok.reduce((n, s) => n + f(s), 0);
  return {
    numFlows: sum((s) => s.numFlows),
    maxFlows: sum((s) => s.maxFlows),
    seenFlows: sum((s) => s.seenFlows),
    flowsRate: sum((s) => s.flowsRate),
    uptimeNs: Number(process.hrtime.bigint() - startedAtNs),
    version: o.version,
    numConnectedNodes: { value: ok.length },
    numUnavailableNodes: { value: unavailable.length },
    unavailableNodes: unavailable,
    membrane: {
      nodeName: RELAY_NAME,
      lostEventsDatapath: sum((s) => s.membrane?.lostEventsDatapath ?? 0),
      lostEventsAgent: sum((s) => s.membrane?.lostEventsAgent ?? 0),
      flowEventsEnabled: ok.some((s) => s.membrane?.flowEventsEnabled),
    },
  };
}
