// Text for the observer's other answers, in the hubble CLI's shapes: agent events (compact),
// server status (`hubble status`), nodes and namespaces (`hubble list`). Pure.
import { formatTime } from './format.ts';
import type { GetAgentEventsResponse, Namespace, ObserverNode, ServerStatus } from './types.ts';

export function agentEventDetails(res: GetAgentEventsResponse): string {
  const e = res.agentEvent;
  if (!e) return 'UNKNOWN';
  if (e.agentStart) return `start time: ${formatTime(e.agentStart.time)}`;
  if (e.policyUpdate)
    return `labels: [${(e.policyUpdate.labels ?? []).join(',')}], revision: ${e.policyUpdate.revision ?? 0}, count: ${e.policyUpdate.ruleCount ?? 0}`;
  if (e.endpointUpdate) {
    const u = e.endpointUpdate;
    return [`id: ${u.id ?? 0}`, u.namespace ? `namespace: ${u.namespace}` : '', u.podName ? `pod name: ${u.podName}` : '']
      .filter(Boolean)
      .join(', ');
  }
  if (e.ipcacheUpdate) return `cidr: ${e.ipcacheUpdate.cidr}, identity: ${e.ipcacheUpdate.identity ?? 0}`;
  if (e.endpointRegenerate)
    return `id: ${e.endpointRegenerate.id ?? 0}, labels: [${(e.endpointRegenerate.labels ?? []).join(',')}]`;
  return 'UNKNOWN';
}

export function agentEventLine(res: GetAgentEventsResponse, utc = false): string {
  return `${formatTime(res.time, utc)}: ${res.agentEvent?.type ?? 'AGENT_EVENT_UNKNOWN'} (${agentEventDetails(res)})`;
}

/** "1,234" like hubble's grouping. */
export function grouped(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

export function durationText(ns: number): string {
  let s = Math.floor(ns / 1e9);
  const parts: string[] = [];
  for (const [unit, size] of [
    ['d', 86400],
    ['h', 3600],
    ['m', 60],
  ] as const) {
    if (s >= size) {
      parts.push(`${Math.floor(s / size)}${unit}`);
      s %= size;
    }
  }
  parts.push(`${s}s`);
  return parts.join('');
}

export function statusLines(s: ServerStatus): string[] {
  const ratio = s.maxFlows ? ` (${((s.numFlows / s.maxFlows) * 100).toFixed(2)}%)` : '';
  const uptime = s.uptimeNs / 1e9;
  const rate = s.flowsRate > 0 ? s.flowsRate.toFixed(2) : uptime > 0 ? (s.seenFlows / uptime).toFixed(2) : 'N/A';
  const lines = [`Current/Max Flows: ${grouped(s.numFlows)}/${grouped(s.maxFlows)}${ratio}`, `Flows/s: ${rate}`];
  if (s.numConnectedNodes) {
    const total = s.numUnavailableNodes ? `/${s.numConnectedNodes.value + s.numUnavailableNodes.value}` : '';
    lines.push(`Connected Nodes: ${s.numConnectedNodes.value}${total}`);
  }
  if (s.numUnavailableNodes?.value)
    lines.push(
      `Unavailable Nodes: ${s.numUnavailableNodes.value}${s.unavailableNodes?.length ? ` (${s.unavailableNodes.join(', ')})` : ''}`,
    );
  const m = s.membrane;
  if (m) {
    lines.push(`Node: ${m.nodeName}, version ${s.version}, up ${durationText(s.uptimeNs)}`);
    lines.push(
      `Seen flows: ${grouped(s.seenFlows)}; lost events: ${m.lostEventsDatapath ?? 0} in the datapath, ${m.lostEventsAgent ?? 0} in the agent`,
    );
    lines.push(`Flow events: ${m.flowEventsEnabled ? 'on' : 'off (--flow-events off)'}`);
  }
  return lines;
}

export function nodeRows(nodes: ObserverNode[]): string[][] {
  return nodes.map((n) => [
    n.name,
    n.state === 'NODE_CONNECTED' ? 'Connected' : (n.state ?? 'UNKNOWN').replace(/^NODE_/, '').toLowerCase(),
    durationText(n.uptimeNs ?? 0),
    'N/A',
    `${grouped(n.numFlows ?? 0)}/${grouped(n.maxFlows ?? 0)}`,
  ]);
}

export function namespaceRows(items: Namespace[]): string[][] {
  return items.map((n) => [n.cluster ?? '', n.namespace]);
}
