// The pod pair the cross-node diagnostics measure between: a client pod on one node and a server pod
// on the other, created through the agents' API, returned once each node's ipcache maps the other's
// pod to its identity (before that a packet would be judged by the wrong identity or dropped).
import { createNetns, type TestNetns } from '../../integration/lib/netns.ts';
import { eventually, type TestNode } from '../../integration/lib/cluster.ts';
import { readIpcache } from '../../integration/lib/cluster-maps.ts';

export interface BenchPod {
  ns: TestNetns;
  ip: string;
  identity: number;
}

/** Client on `n1`, server on `n2` (labels bench=client / bench=server); netns names start with `prefix`. */
export async function podPairAcross(n1: TestNode, n2: TestNode, prefix: string): Promise<{ a: BenchPod; b: BenchPod }> {
  const pod = async (n: TestNode, labels: Record<string, string>): Promise<BenchPod> => {
    const ns = createNetns(prefix);
    const ep = await n.client.createEndpoint({ containerId: `${prefix}-${ns.name}`, netns: ns.path, ifName: 'eth0', labels });
    return { ns, ip: ep.ips[0].address.split('/')[0], identity: ep.identity };
  };
  const a = await pod(n1, { bench: 'client' });
  const b = await pod(n2, { bench: 'server' });
  await eventually(
    'pods known on both nodes',
    () => readIpcache(n2.bpffsDir).get(`${a.ip}/32`) === a.identity && readIpcache(n1.bpffsDir).get(`${b.ip}/32`) === b.identity,
    30_000,
  );
  return { a, b };
}
