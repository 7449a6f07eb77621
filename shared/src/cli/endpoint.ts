// `membrane endpoint list|get|labels`, as cilium-dbg names them. An endpoint is named by its numeric
// id (as flows and cilium-dbg show it) or by container id and interface.
import type { Command } from 'commander';
import { AgentApiError, type AgentClient } from '../api/client.ts';
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
  if (e.containerId) return short ? shortId(e.containerId) : e.containerId + (e.docker?.containerName ? ` (${e.docker.containerName})` : '');
  return e.docker ? `docker endpoint ${short ? shortId(e.docker.endpointId) : e.docker.endpointId}` : '-';
}

/** How every verb that names one endpoint describes the argument findEndpoint takes. */
export const ENDPOINT_REF_HELP = 'endpoint id, container id (container-id:ID to be explicit), or Docker endpoint id';

/** "12" (an endpoint id), "container-id:ID", a container id or a Docker endpoint id, with an optional
 *  interface. A Docker container's endpoint is found by the container id when it has just one. */
export async function findEndpoint(c: AgentClient, ref: string, ifName?: string): Promise<Endpoint> {
  if (/^\d+$/.test(ref) && !ifName) {
    const byId = (await c.listEndpoints()).find((e) => e.id === Number(ref));
    if (byId) return byId;
  }
  const id = ref.replace(/^container-id:/, '');
  try {
    return await c.getEndpoint(id, ifName ?? 'eth0');
  } catch (err) {
    if (!(err instanceof AgentApiError && err.code === 'endpoint_not_found')) throw err;
    const docker = (await c.listEndpoints({ containerId: id })).filter((e) => e.docker && (!ifName || e.ifName === ifName));
    if (docker.length === 1) return docker[0];
    if (docker.length > 1) throw new Error(`container ${id} has ${docker.length} endpoints: name one by its endpoint id (${docker.map((e) => e.id).join(', ')})`);
    throw err;
  }
}

function labelRows(labels: Record<string, string>): string[][] {
  return Object.entries(labels).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => [v === '' ? k : `${k}=${v}`]);
}

export function registerEndpointCommands(program: Command, ctx: CliContext): void {
  const endpoint = program.command('endpoint').description('endpoints on this node');

  endpoint.command('list').description('list endpoints').addOption(outputOption()).option('--no-headers', 'table without the header line')
    .option('--container <id>', "only this container's endpoints (CNI or Docker container id)")
    .action(async (o: { output: string; container?: string; headers: boolean }) => {
      const items = await ctx.client().listEndpoints({ containerId: o.container });
      printTable(o.output, items, ['ID', 'CONTAINER', 'IFACE', 'NETWORK', 'IDENTITY', 'IPV4', 'IPV6', 'HOST IFACE', 'STATUS', 'LABELS'],
        items.map((e) => [String(e.id), containerText(e), e.ifName, e.network, String(e.identity), ipOf(e, 4), ipOf(e, 6), e.hostIfName,
          e.health ? 'unhealthy' : 'ready', labelsText(e.labels)]), o.headers);
    });

  endpoint.command('get').description('show one endpoint: by id, or by container id and interface')
    .argument('<endpoint>', ENDPOINT_REF_HELP).argument('[ifName]', 'interface (default eth0)')
    .addOption(outputOption())
    .action(async (ref: string, ifName: string | undefined, o: { output: string }) => {
      const c = ctx.client();
      const e = await findEndpoint(c, ref, ifName);
      if (o.output !== 'table') return print(render(o.output, e, () => ''));
      const policy = await endpointPolicyLines(c, attachmentOf(e), e.ifName);
      print(keyValues([
        ['ID', String(e.id)], ['Container', containerText(e, false)],
        ...(e.docker ? [['Docker', `endpoint ${e.docker.endpointId}, network ${e.docker.networkId}`] as [string, string]] : []),
        ['Interface', `${e.ifName} (${e.mac}, mtu ${e.mtu})`],
        ['Netns', e.netns ?? '(host, moved by the runtime)'], ['Network', e.network],
        ['Addresses', e.ips.map((ip) => `${ip.address} via ${ip.gateway}`).join(', ')],
        ['Host side', `${e.hostIfName} (ifindex ${e.hostIfIndex}, ${e.hostMac})`],
        ...(policy.length ? policy : [['Identity', String(e.identity)] as [string, string]]),
        ['Labels', labelsText(e.labels)], ['Created', e.createdAt],
        ...(e.health ? [['Status', `unhealthy since ${e.health.since}: ${e.health.problems.join('; ')}`] as [string, string]] : []),
      ]));
    });

  endpoint.command('labels').description("show an endpoint's labels, or change them (-a k=v, -d k): its identity follows")
    .argument('<endpoint>', ENDPOINT_REF_HELP).argument('[ifName]', 'interface (default eth0)')
    .option('-a, --add <k=v>', 'add or replace a label (repeatable)', (v: string, p: string[] = []) => [...p, v])
    .option('-d, --delete <k>', 'remove a label (repeatable)', (v: string, p: string[] = []) => [...p, v])
    .addOption(outputOption()).option('--no-headers', 'table without the header line')
    .action(async (ref: string, ifName: string | undefined, o: { add?: string[]; delete?: string[]; output: string; headers: boolean }) => {
      const c = ctx.client();
      let e = await findEndpoint(c, ref, ifName);
      if (o.add?.length || o.delete?.length) {
        const labels = { ...e.labels };
        for (const k of o.delete ?? []) {
          if (!(k in labels)) throw new Error(`endpoint ${e.id} has no label "${k}" (labels: ${labelsText(e.labels)})`);
          delete labels[k];
        }
        Object.assign(labels, parseLabelArgs(o.add ?? []));
        e = await c.request<Endpoint>('PUT', `/v1/endpoints/${encodeURIComponent(attachmentOf(e))}/${encodeURIComponent(e.ifName)}/labels`, { labels });
      }
      if (o.output !== 'table') return print(render(o.output, e.labels, () => ''));
      print(table(['LABELS'], labelRows(e.labels), o.headers));
      if (o.add?.length || o.delete?.length) print(`identity ${e.identity}\n`);
    });
}
