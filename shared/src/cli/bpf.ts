// `membrane bpf ...`: what the datapath's maps hold, with cilium-dbg's verbs (bpf ct list|flush,
// bpf policy get, bpf ipcache list, bpf tunnel list, bpf metrics list), read through the agent's /v1/bpf API.
import { Option, type Command } from 'commander';
import type { BpfMetricsView, PolicyEntryView, TunnelView } from '../api/bpf-routes.ts';
import { dropText } from '../flows/codes.ts';
import { formatLabels } from '../identity/labels.ts';
import type { CtDetail } from '../maps/conntrack.ts';
import { idArg, type CliContext } from './context.ts';
import { outputOption, print, printTable } from './output.ts';

const PROTOS: Record<number, string> = { 0: 'ANY', 1: 'ICMP', 6: 'TCP', 17: 'UDP', 58: 'ICMPv6', 132: 'SCTP' };
const SCOPES = ['INGRESS', 'EGRESS', 'LOCAL'];
const TCP_STATES = ['SYN_SENT', 'ESTABLISHED', 'CLOSING'];

const proto = (p: number) => PROTOS[p] ?? String(p);
const hostPort = (ip: string, port: number) => (ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`);

/** "80/TCP", "ANY", "8/ICMP" (ICMP entries carry 0x100 | type). */
export function portProto(port: number, p: number): string {
  if (p === 0) return 'ANY';
  if ((p === 1 || p === 58) && port & 0x100) return `${port & 0xff}/${proto(p)}`;
  return port ? `${port}/${proto(p)}` : `ANY/${proto(p)}`;
}

export function ctRows(entries: CtDetail[]): string[][] {
  return entries.map((e) => [
    proto(e.proto),
    SCOPES[e.scope] ?? String(e.scope),
    e.sport || e.dport ? hostPort(e.saddr, e.sport) : e.saddr,
    e.sport || e.dport ? hostPort(e.daddr, e.dport) : e.daddr,
    e.proto === 6 ? (TCP_STATES[e.state] ?? String(e.state)) : '-',
    `${Math.max(0, Math.round(e.expiresInSeconds))}s`,
    `${e.packets[0]}/${e.packets[1]}`,
    `${e.bytes[0]}/${e.bytes[1]}`,
    String(e.owner),
    `${e.srcIdentity}->${e.dstIdentity}`,
    [e.flags & 1 ? 'audit' : '', e.flags & 8 ? 'revoked' : '', e.flags & 32 ? 'tunnel' : ''].filter(Boolean).join(',') || '-',
  ]);
}

export function policyRows(entries: PolicyEntryView[], withEndpoint: boolean): string[][] {
  return entries.map((e) => [
    ...(withEndpoint ? [String(e.endpoint)] : []),
    e.action === 'deny' ? 'Deny' : 'Allow',
    e.direction === 'egress' ? 'Egress' : 'Ingress',
    e.identity ? String(e.identity) : 'ANY',
    e.identity ? (e.labels ? formatLabels(e.labels) : '(unknown)') : 'ANY',
    portProto(e.port, e.proto),
    e.proxyPort ? String(e.proxyPort) : '-',
    String(e.bytes),
    String(e.packets),
    String(e.ruleId ? `0x${e.ruleId.toString(16)}` : '-'),
  ]);
}

export function metricsRows(m: BpfMetricsView): string[][] {
  const sum = (k: 'rxPackets' | 'rxBytes' | 'txPackets' | 'txBytes') => m.endpoints.reduce((n, e) => n + e[k], 0);
  return [
    ['Success', 'EGRESS', String(sum('txPackets')), String(sum('txBytes'))],
    ['Success', 'INGRESS', String(sum('rxPackets')), String(sum('rxBytes'))],
    ...m.drops.map((d) => [dropText(d.code, d.reason), '-', String(d.packets), String(d.bytes)]),
  ];
}

const headersOption = () => new Option('--no-headers', 'table without the header line');

export function registerBpfCommands(program: Command, ctx: CliContext): void {
  const bpfCmd = program.command('bpf').description("the datapath's BPF maps (as cilium-dbg bpf)");

  const ct = bpfCmd.command('ct').description('the connection tracking table');
  ct.command('list')
    .description('every tracked connection: protocol, scope, addresses, state, expiry, totals')
    .addOption(outputOption())
    .addOption(headersOption())
    .action(async (o: { output: string; headers: boolean }) => {
      const r = await ctx.client().request<{ entries: CtDetail[] }>('GET', '/v1/bpf/ct');
      printTable(
        o.output,
        r.entries,
        ['PROTO', 'SCOPE', 'SOURCE', 'DESTINATION', 'STATE', 'EXPIRES', 'PACKETS', 'BYTES', 'ENDPOINT', 'IDENTITIES', 'FLAGS'],
        ctRows(r.entries),
        o.headers,
      );
    });
  ct.command('flush')
    .description('delete every entry: established connections meet policy again as new ones')
    .action(async () => {
      const r = await ctx.client().request<{ deleted: number }>('POST', '/v1/bpf/ct/flush', {});
      print(`Flushed ${r.deleted} entries from the conntrack table\n`);
    });

  bpfCmd
    .command('policy')
    .description('the policy map')
    .command('get')
    .description("an endpoint's policy map entries (--all: every endpoint's)")
    .argument('[endpoint]', 'endpoint id', idArg('endpoint id'))
    .option('--all', 'every endpoint')
    .addOption(outputOption())
    .addOption(headersOption())
    .action(async (endpoint: number | undefined, o: { all?: boolean; output: string; headers: boolean }) => {
      if (endpoint === undefined && !o.all) throw new Error('name an endpoint id, or pass --all');
      if (endpoint !== undefined && o.all) throw new Error('give an endpoint id or --all, not both');
      const r = await ctx
        .client()
        .request<{ entries: PolicyEntryView[] }>('GET', `/v1/bpf/policy${o.all ? '' : `?endpoint=${endpoint}`}`);
      printTable(
        o.output,
        r.entries,
        [
          ...(o.all ? ['ENDPOINT'] : []),
          'POLICY',
          'DIRECTION',
          'IDENTITY',
          'LABELS (source:key[=value])',
          'PORT/PROTO',
          'PROXY PORT',
          'BYTES',
          'PACKETS',
          'RULE',
        ],
        policyRows(r.entries, !!o.all),
        o.headers,
      );
    });

  bpfCmd
    .command('ipcache')
    .description('addresses and prefixes -> security identities')
    .command('list')
    .description('every prefix in the ipcache and its identity')
    .addOption(outputOption())
    .addOption(headersOption())
    .action(async (o: { output: string; headers: boolean }) => {
      const r = await ctx.client().request<{ entries: { prefix: string; identity: number }[] }>('GET', '/v1/bpf/ipcache');
      printTable(
        o.output,
        r.entries,
        ['IP PREFIX/ADDRESS', 'IDENTITY'],
        r.entries.map((e) => [e.prefix, String(e.identity)]),
        o.headers,
      );
    });

  bpfCmd
    .command('tunnel')
    .description("cluster mode's overlay: where other nodes' pods are")
    .command('list')
    .description('every prefix in the tunnel map and the node address it is tunnelled to')
    .addOption(outputOption())
    .addOption(headersOption())
    .action(async (o: { output: string; headers: boolean }) => {
      const r = await ctx.client().request<TunnelView>('GET', '/v1/bpf/tunnel');
      printTable(
        o.output,
        r,
        ['TUNNEL', 'VALUE', 'NODE', 'NODE ID'],
        r.entries.map((e) => [e.prefix, e.endpoint, e.node ?? '-', String(e.nodeId)]),
        o.headers,
      );
    });

  bpfCmd
    .command('metrics')
    .description("the datapath's counters")
    .command('list')
    .description('forwarded packets by direction and drops by reason')
    .addOption(outputOption())
    .addOption(headersOption())
    .action(async (o: { output: string; headers: boolean }) => {
      const m = await ctx.client().request<BpfMetricsView>('GET', '/v1/bpf/metrics');
      printTable(o.output, m, ['REASON', 'DIRECTION', 'PACKETS', 'BYTES'], metricsRows(m), o.headers);
    });
}
