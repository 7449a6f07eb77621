// `membrane endpoint list|get|labels`, as cilium-dbg names them. An endpoint is named by its numeric
// id (as flows and cilium-dbg show it) or by container id and interface.
import type { Command } from 'commander';
import type { AgentClient } from '../api/client.ts';
import { parseLabelArgs } from '../identity/labels.ts';
import type { Endpoint } from '../types.ts';
import type { CliContext } from './context.ts';
import { keyValues, labelsText, outputOption, print, printTable, render, table } from './output.ts';
import { endpointPolicyLines } from './policy.ts';

function ipOf(e: Endpoint, family: 4 | 6): string {
  return e.ips.find((ip) => ip.family === family)?.address ?? '-';
}

export function shortId(id: string): string {
  return /^[0-9a-f]{64}$/.test(id) ? id.slice(0, 12) : id;
}

/** What names the endpoint in the API: the CNI container id, or a Docker endpoint's Docker endpoint id. */
export function attachmentOf(e: Endpoint): string {
  return e.docker?.endpointId ?? e.containerId;
}

/** The container column: a Docker endpoint whose container is not known yet shows its endpoint id. */
function containerText(e: Endpoint, short = true): string {
  if (e.containerId)
    return short ? shortId(e.containerId) : e.containerId + (e.docker?.containerName ? ` (${e.docker.containerName})` : '');
  return e.docker ? `docker endpoint ${short ? shortId(e.docker.endpointId) : e.docker.endpointId}` : '-';
}

/** How every verb that names one endpoint describes the argument findEndpoint takes. */
export const ENDPOINT_REF_HELP =
  'endpoint id, container id or a unique prefix (container-id:ID to be explicit), container name, Docker endpoint id, namespace/pod';

/** An endpoint by any name a user sees: its id, a container id or a unique prefix of one, a container
 *  name, a Docker endpoint id, namespace/pod (shared/src/endpoint/lookup.ts); the agent says which
 *  endpoints an ambiguous name fits. */
export function findEndpoint(c: AgentClient, ref: string, ifName?: string): Promise<Endpoint> {
  return c.findEndpoint(ref, ifName);
}

/** ready, unhealthy (restore could not bring it back), verifying (its container side is not checked
 *  yet since the agent restarted), labels-pending (down until its runtime tells
 *  its labels) or init (the runtime did not answer in time: up, closed while any policy exists). */
function statusText(e: Endpoint): string {
  if (e.health) return e.health.state;
  if (e.labelsPending) return e.labelsPending.expired ? 'init' : 'labels-pending';
  return 'ready';
}

function labelRows(labels: Record<string, string>): string[][] {
  return Object.entries(labels)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => [v === '' ? k : `${k}=${v}`]);
}

export function registerEndpointCommands(program: Command, ctx: CliContext): void {
  const endpoint = program.command('endpoint').description('endpoints on this node');

  endpoint
    .command('list')
    .description('list endpoints')
    .addOption(outputOption())
    .option('--no-headers', 'table without the header line')
    .option('--container <name>', 'only this container: id or prefix, name, Docker endpoint id, namespace/pod')
    .action(async (o: { output: string; container?: string; headers: boolean }) => {
      const items = await ctx.client().listEndpoints(o.container ? { ref: o.container } : {});
      printTable(
        o.output,
        items,
        ['ID', 'CONTAINER', 'IFACE', 'NETWORK', 'IDENTITY', 'IPV4', 'IPV6', 'HOST IFACE', 'STATUS', 'LABELS'],
        items.map((e) => [
          String(e.id),
          containerText(e),
          e.ifName,
          e.network,
          String(e.identity),
          ipOf(e, 4),
          ipOf(e, 6),
          e.hostIfName,
          statusText(e),
          labelsText(e.labels),
        ]),
        o.headers,
      );
    });

  endpoint
    .command('get')
    .description(
      'show one endpoint: by id, container id (or a unique prefix), container name, Docker endpoint id or namespace/pod',
    )
    .argument('<endpoint>', ENDPOINT_REF_HELP)
    .argument('[ifName]', 'interface, when the container has several')
    .addOption(outputOption())
    .action(async (ref: string, ifName: string | undefined, o: { output: string }) => {
      const c = ctx.client();
      const e = await findEndpoint(c, ref, ifName);
      if (o.output !== 'table') return print(render(o.output, e, () => ''));
      const policy = await endpointPolicyLines(c, attachmentOf(e), e.ifName);
      print(
        keyValues([
          ['ID', String(e.id)],
          ['Container', containerText(e, false)],
          ...(e.docker ? [['Docker', `endpoint ${e.docker.endpointId}, network ${e.docker.networkId}`] as [string, string]] : []),
          ['Interface', `${e.ifName} (${e.mac}, mtu ${e.mtu})`],
          ['Netns', e.netns ?? '(host, moved by the runtime)'],
          ['Network', e.network],
          ['Addresses', e.ips.map((ip) => `${ip.address} via ${ip.gateway}`).join(', ')],
          ['Host side', `${e.hostIfName} (ifindex ${e.hostIfIndex}, ${e.hostMac})`],
          ...(policy.length ? policy : [['Identity', String(e.identity)] as [string, string]]),
          ['Labels', labelsText(e.labels)],
          ['Created', e.createdAt],
          ...(e.health
            ? [['Status', `${e.health.state} since ${e.health.since}: ${e.health.problems.join('; ')}`] as [string, string]]
            : []),
        ]),
      );
    });

  endpoint
    .command('labels')
    .description("show an endpoint's labels, or change the api: ones (-a k=v, -d k): its identity follows")
    .argument('<endpoint>', ENDPOINT_REF_HELP)
    .argument('[ifName]', 'interface, when the container has several')
    .option('-a, --add <k=v>', 'add or replace a label (repeatable)', (v: string, p: string[] = []) => [...p, v])
    .option('-d, --delete <k>', 'remove a label (repeatable)', (v: string, p: string[] = []) => [...p, v])
    .addOption(outputOption())
    .option('--no-headers', 'table without the header line')
    .action(
      async (
        ref: string,
        ifName: string | undefined,
        o: { add?: string[]; delete?: string[]; output: string; headers: boolean },
      ) => {
        const c = ctx.client();
        let e = await findEndpoint(c, ref, ifName);
        if (o.add?.length || o.delete?.length) {
          // Only the callers' labels (api:, cni:) can change here; the runtime's (k8s:, container:) stay.
          const labels = Object.fromEntries(Object.entries(e.labels).filter(([k]) => /^(api|cni):/.test(k)));
          for (const k of o.delete ?? []) {
            const key = [k, `api:${k}`, `cni:${k}`].find((x) => x in labels);
            if (!key)
              throw new Error(
                `endpoint ${e.id} has no label "${k}" that can be removed (labels: ${labelsText(e.labels)}; k8s: and container: labels come from the runtime)`,
              );
            delete labels[key];
          }
          Object.assign(labels, parseLabelArgs(o.add ?? []));
          e = await c.request<Endpoint>(
            'PUT',
            `/v1/endpoints/${encodeURIComponent(attachmentOf(e))}/${encodeURIComponent(e.ifName)}/labels`,
            { labels },
          );
        }
        if (o.output !== 'table') return print(render(o.output, e.labels, () => ''));
        print(table(['LABELS'], labelRows(e.labels), o.headers));
        if (o.add?.length || o.delete?.length) print(`identity ${e.identity}\n`);
      },
    );

  endpoint
    .command('delete')
    .description('remove an endpoint and everything it holds (what a runtime that never sent DEL left)')
    .argument('<endpoint>', 'endpoint id, container id or prefix, container name, Docker endpoint id, namespace/pod')
    .argument('[ifName]', 'interface, when the container has several')
    .action(async (ref: string, ifName: string | undefined) => {
      const c = ctx.client();
      const e = await findEndpoint(c, ref, ifName);
      const r = await c.deleteEndpoint(attachmentOf(e), e.ifName);
      print(`endpoint ${e.id} (${containerText(e, false)}, ${e.ifName}) ${r.deleted ? 'deleted' : 'was already gone'}\n`);
    });
}
