// The three pods the restart tests share: client, web and other, each in a netns of its own (pushed to
// `nss`, which the file's teardown removes) with an endpoint labelled app=<name>.
import type { AgentClient } from '../../shared/src/api/client.ts';
import type { Endpoint } from '../../shared/src/types.ts';
import { randomId } from './agent.ts';
import { createNetns, type TestNetns } from './netns.ts';

/** The policy these tests enforce on them: web admits client only (other is denied). */
export const WEB_FROM_CLIENT = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-from-client}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}]
`;

export type Pod = { ns: TestNetns; ep: Endpoint };
export type ThreePods = Record<'client' | 'web' | 'other', Pod>;

export async function clientWebOther(client: AgentClient, idPrefix: string, nss: TestNetns[]): Promise<ThreePods> {
  const pods: Partial<ThreePods> = {};
  for (const name of ['client', 'web', 'other'] as const) {
    const ns = createNetns('mbr');
    nss.push(ns);
    pods[name] = {
      ns,
      ep: await client.createEndpoint({
        containerId: `${idPrefix}-${name}-${randomId()}`,
        netns: ns.path,
        ifName: 'eth0',
        labels: { app: name },
      }),
    };
  }
  return pods as ThreePods;
}
