// What is wrong with a live endpoint, looked at from the node: its host link, the BPF program on it,
// and the container side (interface, addresses, routes). Empty: healthy.
import type { Endpoint } from '../types.ts';
import type { Datapath } from '../bpf/datapath.ts';
import type { Netlink } from '../netlink/index.ts';
import { openNetns, type NetNs } from '../netns/index.ts';
import { plumbSpec } from './recipe.ts';
import { inspectContainerSide } from './plumbing.ts';

export function endpointProblems(d: { host: Netlink; datapath: Pick<Datapath, 'isCurrent'> }, ep: Endpoint): string[] {
  const link = d.host.linkByName(ep.hostIfName);
  if (!link) return [`host interface ${ep.hostIfName} is missing`];
  const problems: string[] = [];
  if (!d.datapath.isCurrent(link.index)) problems.push(`BPF program is not attached to ${ep.hostIfName}`);
  if (ep.netns) {
    let ns: NetNs | undefined;
    try {
      ns = openNetns(ep.netns);
      problems.push(...inspectContainerSide(plumbSpec(ep, ns)));
    } catch (e) {
      problems.push((e as Error).message);
    } finally {
      ns?.close();
    }
  }
  return problems;
}
