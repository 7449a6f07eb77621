// `membrane node list` and the cluster lines of `membrane status` (cluster mode).
import type { Command, Option } from 'commander';
import type { AgentClient } from '../api/client.ts';
import type { ClusterStatusView } from '../types.ts';
import { printTable, type OutputFormat } from './output.ts';

interface NodeItem {
  name: string;
  addresses: { type: string; ip: string }[];
  podCidrs: { ipv4?: string; ipv6?: string };
  nodeId: number;
  lastSeenMs: number;
}

/** Lines for `membrane status` when the agent is in cluster mode. */
export function clusterStatusLines(c: ClusterStatusView | undefined): [string, string][] {
  if (!c) return [['Cluster', 'none (single node, local store)']];
  const k = c.kvstore;
  const live = k.watches.filter((w) => w.live).length;
  const contact = k.lastContactMs === undefined ? 'never' : `${(k.lastContactMs / 1000).toFixed(1)}s ago`;
  return [
    ['Cluster', `${c.name} (node ${c.node}, id ${c.nodeId}, ${c.nodeIp}; ${c.nodes} node${c.nodes === 1 ? '' : 's'})`],
    ['Pod CIDRs', [c.podCidrs.ipv4, c.podCidrs.ipv6].filter(Boolean).join(', ') || '-'],
    [
      'KVStore',
      `${k.type} ${k.endpoints.join(',')}: ${k.connected ? 'connected' : `DISCONNECTED${k.lastError ? ` (${k.lastError})` : ''}`}` +
        `${k.version ? `, etcd ${k.version}` : ''}, revision ${k.revision}, last answer ${contact}`,
    ],
    [
      'KVStore sync',
      `${live}/${k.watches.length} watches live (revisions ${k.watches.map((w) => `${w.prefix}${w.revision}`).join(' ')}), ` +
        `${k.pendingWrites} write${k.pendingWrites === 1 ? '' : 's'} pending, lease ${k.leaseId ?? 'none'} (TTL ${k.leaseTtlSeconds}s)`,
    ],
    ['Remote endpoints', String(c.remoteEndpoints)],
    ...(c.routing ? [['Routing', routingText(c.routing)] as [string, string]] : []),
  ];
}

function routingText(r: NonNullable<ClusterStatusView['routing']>): string {
  const how =
    r.mode === 'tunnel' && r.device
      ? `tunnel: vxlan ${r.device.name}, UDP ${r.device.port}, MTU ${r.device.mtu} over ${r.underlay.device} (MTU ${r.underlay.mtu})`
      : `native: routes via the node addresses over ${r.underlay.device}`;
  const problems = [
    ...r.unreachable.map((u) => `${u.cidr} of ${u.node} unreachable`),
    ...(r.lastError ? [`ERROR ${r.lastError}`] : []),
  ];
  return (
    `${how}; ${r.nodes} other node${r.nodes === 1 ? '' : 's'}, ${r.routes} route${r.routes === 1 ? '' : 's'}` +
    `${r.mode === 'tunnel' ? `, ${r.tunnelEntries} tunnel entries` : ''}${problems.length ? `; ${problems.join('; ')}` : ''}`
  );
}

export function registerClusterCommands(program: Command, client: () => AgentClient, output: () => Option): void {
  const node = program.command('node').description('nodes of the cluster (cluster mode)');
  node
    .command('list')
    .description('nodes with their addresses, pod CIDRs and when they were last seen')
    .addOption(output())
    .option('--no-headers', 'table without the header line')
    .action(async (o: { output: OutputFormat; headers: boolean }) => {
      const c = client();
      const s = await c.status();
      if (!s.cluster) throw new Error('this agent is not in cluster mode (start it with --kvstore etcd --kvstore-endpoints URL)');
      const { items } = await c.request<{ items: NodeItem[] }>('GET', '/v1/cluster/nodes');
      printTable(
        o.output,
        items,
        ['NAME', 'ID', 'IPS', 'POD CIDRS', 'LAST SEEN'],
        items.map((n) => [
          n.name + (n.name === s.cluster!.node ? ' (this node)' : ''),
          String(n.nodeId),
          n.addresses.map((a) => a.ip).join(','),
          [n.podCidrs.ipv4, n.podCidrs.ipv6].filter(Boolean).join(',') || '-',
          `${Math.round(n.lastSeenMs / 1000)}s ago`,
        ]),
        o.headers,
      );
    });
}
