// `membrane status` (cilium-dbg status: --brief, --verbose, -o json|yaml) and `membrane version`.
import type { Command } from 'commander';
import type { AgentClient } from '../api/client.ts';
import type { BpfMetricsView } from '../api/bpf-routes.ts';
import type { AgentStatus } from '../types.ts';
import { VERSION } from '../version.ts';
import { briefLine, statusProblems } from '../health/status.ts';
import { clusterStatusLines } from './cluster.ts';
import type { CliContext } from './context.ts';
import { keyValues, outputOption, print, render, table } from './output.ts';

function uptime(s: number): string {
  const d = Math.floor(s / 86400),
    h = Math.floor((s % 86400) / 3600),
    m = Math.floor((s % 3600) / 60);
  return [d && `${d}d`, h && `${h}h`, m && `${m}m`, `${s % 60}s`].filter(Boolean).join('');
}

export function statusLines(s: AgentStatus): [string, string][] {
  const p = s.policy as { revision?: number; policies?: number; auditMode?: boolean };
  const obs = s.observer;
  const problems = statusProblems(s);
  return [
    ['Agent', `${problems.length ? 'Degraded' : 'Ok'}   ${s.version} (node ${s.nodeName}, up ${uptime(s.uptimeSeconds)})`],
    ...problems.map((x): [string, string] => [`  ${x.part}`, x.problem]),
    [
      'Endpoints',
      `${s.endpoints}${s.unhealthyEndpoints?.length ? `, ${s.unhealthyEndpoints.length} unhealthy` : ''}${s.verifyingEndpoints ? `, ${s.verifyingEndpoints} verifying` : ''}`,
    ],
    ...(s.unhealthyEndpoints ?? []).map((u): [string, string] => [
      `  ${u.id} ${u.endpoint}`,
      `unhealthy since ${u.since}: ${u.problems.join('; ')}`,
    ]),
    ['Networks', String(s.networks)],
    ['Datapath', `${s.datapath.attach}, pinned in ${s.datapath.pinDir}, gateways on ${s.datapath.hostDevice}`],
    // Another tool's program ahead of ours sees (and may pass) packets before our enforcement does.
    ...(s.datapath.behindForeign ?? []).map((h): [string, string] => [
      `  ${h.device || `ifindex ${h.ifindex}`} ${h.direction}`,
      `behind another tool's tcx program${h.aheadProgramIds.length > 1 ? 's' : ''} ${h.aheadProgramIds.join(', ')} (run first)`,
    ]),
    [
      'Policy',
      `revision ${p.revision ?? 0}, ${p.policies ?? 0} polic${p.policies === 1 ? 'y' : 'ies'}, audit mode ${p.auditMode ? 'on' : 'off'}`,
    ],
    ['Observer', `${obs?.socket ?? '-'}${obs?.address ? `, TCP ${obs.address}` : ''}, ${obs?.flowBufferSize ?? 0} flows kept`],
    ['Metrics', s.metrics?.address ?? 'off'],
    ['State', s.stateDir],
    ['Socket', s.socket],
    ...clusterStatusLines(s.cluster),
  ];
}

async function verboseLines(c: AgentClient, s: AgentStatus): Promise<string> {
  const [metrics, fill] = await Promise.all([
    c.request<BpfMetricsView>('GET', '/v1/bpf/metrics'),
    c.request<{ entries: number; max: number }>('GET', '/v1/bpf/ct/fill'),
  ]);
  const p = s.policy as Record<string, unknown>;
  const usage = Object.entries(p)
    .filter(([k]) => !['revision', 'policies', 'auditMode'].includes(k))
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  const out = [
    keyValues([
      ...statusLines(s),
      ['Policy maps', usage || '-'],
      ['Conntrack', `${fill.entries}/${fill.max} entries (${((fill.entries / Math.max(1, fill.max)) * 100).toFixed(1)}%)`],
      ['Lost events', String(metrics.eventsLost)],
    ]),
    '\nDrops by reason:\n',
    metrics.drops.length
      ? table(
          ['REASON', 'CODE', 'PACKETS', 'BYTES'],
          metrics.drops.map((d) => [d.reason, String(d.code), String(d.packets), String(d.bytes)]),
        )
      : '  none\n',
  ];
  return out.join('');
}

export function registerStatusCommands(program: Command, ctx: CliContext): void {
  program
    .command('status')
    .description('agent status (as cilium-dbg status)')
    .addOption(outputOption())
    .option(
      '--brief',
      'one line: OK when every part is healthy, else what is wrong part by part, or why the agent did not answer (exit code 1)',
    )
    .option('--verbose', 'also map usage, conntrack fill and drops by reason')
    .action(async (o: { output: string; brief?: boolean; verbose?: boolean }) => {
      const c = ctx.client();
      const s = await c.status();
      if (o.brief) {
        const problems = statusProblems(s);
        print(`${briefLine(problems)}\n`);
        if (problems.length) process.exitCode = 1;
        return;
      }
      if (o.output !== 'table') return print(render(o.output, s, () => ''));
      print(o.verbose ? await verboseLines(c, s) : keyValues(statusLines(s)));
    });

  program
    .command('version')
    .description('the versions of this CLI and of the agent it talks to')
    .addOption(outputOption())
    .action(async (o: { output: string }) => {
      let daemon: string | undefined;
      let error: unknown;
      try {
        daemon = (await ctx.client().version()).version;
      } catch (e) {
        error = e;
      }
      const data = { client: VERSION, daemon: daemon ?? null };
      print(render(o.output, data, () => `Client: ${VERSION}\n${daemon ? `Daemon: ${daemon}\n` : ''}`));
      if (error) throw error;
    });
}
