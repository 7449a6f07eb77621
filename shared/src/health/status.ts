// Is the agent healthy? One decision over what GET /v1/status reports, part by part, used by
// `membrane status --brief` (and anything else that must say OK or name what is wrong). Pure.
import type { AgentStatus } from '../types.ts';

export interface StatusProblem {
  /** The part that is degraded, as `membrane status` names it. */
  part: 'Endpoints' | 'Datapath' | 'Store' | 'L7 proxy' | 'DNS proxy' | 'KVStore' | 'Routing';
  problem: string;
}

interface L7View {
  needed?: boolean;
  workers?: { index: number; connected: boolean; restarts: number }[];
}
interface DnsView {
  running?: boolean;
}

export function statusProblems(s: AgentStatus): StatusProblem[] {
  const out: StatusProblem[] = [];
  const unhealthy = s.unhealthyEndpoints ?? [];
  if (unhealthy.length) {
    const first = unhealthy[0];
    out.push({
      part: 'Endpoints',
      problem: `${unhealthy.length} unhealthy (${first.id} ${first.endpoint}: ${first.problems.join('; ')})`,
    });
  }
  for (const p of s.datapath.problems ?? []) out.push({ part: 'Datapath', problem: p });
  if (s.store?.problem) out.push({ part: 'Store', problem: s.store.problem });
  const l7 = s.l7 as L7View | undefined;
  // Workers run only while a policy has L7 rules: not running otherwise is how it should be.
  if (l7?.needed) {
    for (const w of l7.workers ?? []) {
      if (!w.connected)
        out.push({
          part: 'L7 proxy',
          problem: `worker ${w.index} is not connected${w.restarts ? ` (${w.restarts} restarts)` : ''}`,
        });
    }
  }
  const dns = s.dns as DnsView | undefined;
  if (dns && dns.running === false) out.push({ part: 'DNS proxy', problem: 'not running' });
  const kv = s.cluster?.kvstore;
  // What being cut off means here: the other nodes' endpoints keep their last known identities.
  const lastKnown = (since?: number) => {
    const n = s.cluster?.remoteEndpoints;
    if (!n) return '';
    const ago = since === undefined ? '' : ` (no answer for ${Math.round(since / 1000)} s)`;
    return s.cluster?.remoteEndpointsWithheld
      ? `; ${n} remote endpoint addresses withdrawn from the datapath (--kvstore-max-stale: their packets count as world)${ago}`
      : `; ${n} remote endpoint addresses keep their last known identities${ago}`;
  };
  if (kv && !kv.connected)
    out.push({
      part: 'KVStore',
      problem: `not connected to ${kv.endpoints.join(', ') || kv.type}${kv.lastError ? `: ${kv.lastError}` : ''}${lastKnown(kv.lastContactMs)}`,
    });
  else if (kv)
    for (const w of kv.watches.filter((x) => !x.live))
      out.push({
        part: 'KVStore',
        problem: `watch on ${w.prefix} is not live${w.prefix.startsWith('ipcache') ? lastKnown() : ''}`,
      });
  const routing = s.cluster?.routing;
  if (routing?.unreachable.length) {
    out.push({
      part: 'Routing',
      problem: `pods of ${routing.unreachable.map((u) => `${u.node} (${u.cidr})`).join(', ')} are unreachable`,
    });
  }
  if (routing?.lastError) out.push({ part: 'Routing', problem: routing.lastError });
  return out;
}

/** The one line `membrane status --brief` prints: OK, or every problem named by its part. */
export function briefLine(problems: StatusProblem[]): string {
  return problems.length ? `DEGRADED: ${problems.map((p) => `${p.part}: ${p.problem}`).join('; ')}` : 'OK';
}
