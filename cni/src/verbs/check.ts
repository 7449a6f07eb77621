// CHECK: prevResult agrees with the agent's endpoint, and the endpoint is really in place (container
// interface, addresses, routes, host veth with its BPF programs). Any mismatch is an error.
import type { Endpoint } from '../../../shared/src/types.ts';
import { AgentApiError } from '../../../shared/src/api/client.ts';
import { ipamType, requirePrevResult, type Invocation } from '../context.ts';
import { CniCode, CniError, fromAgentError } from '../errors.ts';
import { inspectContainerSide, inspectHostSide } from '../inspect.ts';
import { parseResult, type Result } from '../result.ts';

/** The agent's answer to GET /v1/endpoints/:cid/:if?check=1: its own inspection of the container side,
 *  the host veth and the BPF attachment. (`datapath` is the shape first sketched; both are read.) */
interface CheckAnswer {
  endpoint: Endpoint;
  healthy?: boolean;
  problems?: string[];
  datapath?: { attached: boolean; problems?: string[] };
}

export async function cmdCheck(inv: Invocation): Promise<string> {
  const prev = parseResult(requirePrevResult(inv), 'prevResult');
  const view = await agentView(inv);
  const problems = [
    ...compareWithPrev(inv, view.endpoint, prev),
    ...(view.agentProblems ?? [...inspectContainerSide(view.endpoint, inv.env.netns), ...inspectHostSide(view.endpoint)]),
  ];
  if (problems.length) {
    throw new CniError(
      CniCode.CHECK_FAILED,
      `CHECK ${inv.env.containerId}/${inv.env.ifName}: ${problems[0]}`,
      problems.join('; '),
    );
  }
  const type = ipamType(inv);
  if (type) inv.exec({ type, verb: 'CHECK', stdin: inv.stdin, cniPath: inv.env.path });
  return '';
}

/** The endpoint, plus the agent's own findings when it offers ?check=1 (undefined: inspect ourselves). */
async function agentView(inv: Invocation): Promise<{ endpoint: Endpoint; agentProblems?: string[] }> {
  const { containerId, ifName } = inv.env;
  const path = `/v1/endpoints/${encodeURIComponent(containerId)}/${encodeURIComponent(ifName)}?check=1`;
  try {
    const body = await inv.agent().request<CheckAnswer | Endpoint>('GET', path);
    if ('endpoint' in body && body.endpoint) return { endpoint: body.endpoint, agentProblems: agentProblems(body) };
    return { endpoint: body as Endpoint };
  } catch (e) {
    if (e instanceof AgentApiError && e.code === 'endpoint_not_found') {
      throw new CniError(
        CniCode.CHECK_FAILED,
        `CHECK ${containerId}/${ifName}: the membrane agent has no such endpoint`,
        e.message,
      );
    }
    throw fromAgentError(e, `CHECK ${containerId}/${ifName}`);
  }
}

function agentProblems(a: CheckAnswer): string[] {
  const problems = [...(a.problems ?? []), ...(a.datapath?.problems ?? [])];
  if (!problems.length && (a.healthy === false || a.datapath?.attached === false))
    problems.push('the agent reports the endpoint unhealthy');
  return problems;
}

/** prevResult must describe the agent's endpoint: our interfaces (name, sandbox, MAC), addresses, routes. */
export function compareWithPrev(inv: Invocation, ep: Endpoint, prev: Result): string[] {
  const problems: string[] = [];
  if (ep.netns && ep.netns !== inv.env.netns) problems.push(`endpoint is in netns ${ep.netns}, CNI_NETNS is ${inv.env.netns}`);
  const idx = prev.interfaces.findIndex((i) => i.name === ep.ifName && i.sandbox === inv.env.netns);
  if (idx < 0) return [...problems, `prevResult has no interface ${ep.ifName} in ${inv.env.netns}`];
  const iface = prev.interfaces[idx];
  if (iface.mac && iface.mac.toLowerCase() !== ep.mac.toLowerCase())
    problems.push(`${ep.ifName} has MAC ${ep.mac}, prevResult says ${iface.mac}`);
  if (!prev.interfaces.some((i) => i.name === ep.hostIfName && !i.sandbox))
    problems.push(`prevResult lacks host interface ${ep.hostIfName}`);
  const epIps = new Set(ep.ips.map((i) => i.address));
  const prevIps = prev.ips.filter((ip) => ip.interface === idx).map((ip) => ip.address);
  for (const a of prevIps)
    if (!epIps.has(a)) problems.push(`prevResult address ${a} is not the endpoint's (${[...epIps].join(', ')})`);
  for (const a of epIps) if (!prevIps.includes(a)) problems.push(`endpoint address ${a} is missing from prevResult`);
  for (const r of ep.routes) {
    if (!prev.routes.some((p) => p.dst === r.dst && (p.gw ?? '') === (r.gw ?? '')))
      problems.push(`route ${r.dst}${r.gw ? ` via ${r.gw}` : ''} is missing from prevResult`);
  }
  return problems;
}
