// `membrane policy ...` and `membrane identity list`. Validation runs locally (no agent needed) with
// the same parser the agent uses; everything else goes through the agent API.
import fs from 'node:fs';
import { type Command, Option } from 'commander';
import { stringify } from 'yaml';
import { AgentApiError, type AgentClient } from '../api/client.ts';
import { PolicyClient } from '../policy/client.ts';
import { formatIssue, parsePolicies, type PolicyIssue } from '../policy/parse.ts';
import { DEFAULT_NAMESPACE } from '../policy/schema-common.ts';
import { parseLabelArgs, formatLabels } from '../identity/labels.ts';
import type { TraceHttp, TraceResult, TraceSide } from '../policy/trace.ts';
import type { HttpRule } from '../policy/types.ts';
import type { EndpointPolicyView } from '../policy/engine.ts';
import type { CliContext } from './context.ts';
import { attachmentOf, ENDPOINT_REF_HELP, findEndpoint } from './endpoint.ts';
import { keyValues, outputOption as output, print, render, table, type OutputFormat } from './output.ts';

function readInput(file: string): string {
  try {
    return fs.readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (e) {
    throw new Error(`cannot read ${file === '-' ? 'standard input' : file}: ${(e as Error).message}`);
  }
}

function issuesError(file: string, issues: PolicyIssue[]): Error {
  const name = file === '-' ? '<stdin>' : file;
  return new Error(
    `${name} is not a valid policy (${issues.length} problem${issues.length > 1 ? 's' : ''}):\n${issues.map((i) => `  ${formatIssue(i, name)}`).join('\n')}`,
  );
}

/** Lines for `membrane endpoint get`: identity, enforcement, the policies selecting it. */
export async function endpointPolicyLines(client: AgentClient, containerId: string, ifName: string): Promise<[string, string][]> {
  let v: EndpointPolicyView;
  try {
    v = await new PolicyClient(client).endpoint(containerId, ifName);
  } catch {
    return [];
  }
  return [
    ['Identity', `${v.identity} (${formatLabels(v.labels)})`],
    [
      'Policy',
      `ingress ${v.enforcement.ingress}, egress ${v.enforcement.egress}${v.audit ? ', audit mode' : ''} (${v.entries} map entries)`,
    ],
    [
      'Selected by',
      v.policies.length
        ? v.policies
            .map(
              (p) =>
                `${p.name}${p.ingress || p.egress ? ` [${[p.ingress && 'ingress', p.egress && 'egress'].filter(Boolean).join('+')}]` : ''}`,
            )
            .join(', ')
        : v.init
          ? 'the init policy: its labels are not known yet (closed while any policy exists)'
          : '- (no policy selects it: allow all)',
    ],
    ...(v.l7 ?? []).map((s): [string, string] => [
      `L7 ${s.direction}`,
      `${s.port} from ${s.peers.includes(0) ? 'any peer' : `${s.peers.length} peer identit${s.peers.length > 1 ? 'ies' : 'y'}`} through the HTTP proxy: ${s.rules.map((r) => describeHttpRule(r.http)).join(' | ')}`,
    ]),
  ];
}

/** One HTTP rule on one line: "GET /public/.* host=... X-Token: ..." ("any request" when empty). */
export function describeHttpRule(h: HttpRule): string {
  const parts = [h.method ?? '*', h.path ?? '*'];
  if (h.host) parts.push(`host=${h.host}`);
  for (const x of h.headers) parts.push(x.value === undefined ? `${x.name}` : `${x.name}: ${x.value}`);
  for (const m of h.headerMatches)
    parts.push(`${m.name}${m.value !== undefined ? `=${m.value}` : ''}${m.mismatch ? ` (${m.mismatch})` : ''}`);
  return parts.join(' ');
}

function traceSide(labels: string[] | undefined, ip: string | undefined, which: string, fqdn?: string): TraceSide {
  if ([ip, labels?.length, fqdn].filter(Boolean).length > 1)
    throw new Error(`give one of --${which} labels, --${which}-ip${which === 'dst' ? ', --dst-fqdn' : ''}`);
  if (fqdn) return { fqdn };
  if (ip) return { ip };
  if (!labels?.length) throw new Error(`--${which} k=v... or --${which}-ip ADDRESS is required`);
  return { labels: parseLabelArgs(labels) };
}

interface TraceHttpOptions {
  httpMethod?: string;
  httpPath?: string;
  httpHost?: string;
  httpHeader?: string[];
}

function traceHttp(o: TraceHttpOptions): TraceHttp | undefined {
  if (!o.httpMethod && !o.httpPath && !o.httpHost && !o.httpHeader?.length) return undefined;
  const headers: Record<string, string> = {};
  for (const h of o.httpHeader ?? []) {
    const i = h.indexOf(':');
    if (i <= 0) throw new Error(`--http-header ${JSON.stringify(h)}: expected "Name: value"`);
    headers[h.slice(0, i).trim()] = h.slice(i + 1).trim();
  }
  return {
    ...(o.httpMethod ? { method: o.httpMethod } : {}),
    ...(o.httpPath ? { path: o.httpPath } : {}),
    ...(o.httpHost ? { host: o.httpHost } : {}),
    ...(o.httpHeader?.length ? { headers } : {}),
  };
}

function traceText(r: TraceResult): string {
  const who = (s: TraceResult['src']) =>
    s.unallocated
      ? `${formatLabels(s.labels)}: no identity yet (${s.candidates ? `these labels select identities ${s.candidates.join(', ')}: name more labels to pick one` : 'no endpoint has these labels'}; traced as a new one)`
      : `identity ${s.identity} (${formatLabels(s.labels)})`;
  const lines = [
    `${r.verdict === 'allow' ? 'ALLOWED' : 'DENIED'}: ${r.port}`,
    `  from ${who(r.src)}`,
    `  to   ${who(r.dst)}`,
    ...r.steps.flatMap((s) => [
      `  ${s.direction.padEnd(7)} ${s.verdict.padEnd(5)} ${s.reason}  [${s.enforcedBy}]`,
      ...(s.l7?.kind === 'http' && !s.l7.matched
        ? s.l7.rules.map((h) => `          http ${describeHttpRule(h.http)}  (${h.policy} ${h.path})`)
        : []),
      ...(s.l7?.kind === 'dns' && !s.l7.matched
        ? s.l7.rules.map(
            (d) =>
              `          dns ${[d.dns.matchName && `matchName ${d.dns.matchName}`, d.dns.matchPattern && `matchPattern ${d.dns.matchPattern}`].filter(Boolean).join(' / ')}  (${d.policy} ${d.path})`,
          )
        : []),
    ]),
  ];
  if (r.fqdn)
    lines.splice(
      3,
      0,
      `  ${r.fqdn.name}: ${r.fqdn.addresses.length ? `learned addresses ${r.fqdn.addresses.join(', ')} (traced: ${r.fqdn.addresses[0]})` : (r.fqdn.note ?? 'not looked up yet')}`,
    );
  if (!r.steps.length) lines.push('  neither side is an endpoint of this node: no policy applies');
  return lines.join('\n') + '\n';
}

export function registerPolicyCommands(program: Command, ctx: CliContext): void {
  const client = () => ctx.client();
  const pc = () => new PolicyClient(client());
  const policy = program.command('policy').description('network policies (CiliumNetworkPolicy, Kubernetes NetworkPolicy)');

  policy
    .command('import')
    .description('add or replace the policies in FILE (YAML or JSON, or a JSON rule array as cilium-dbg takes; - for stdin)')
    .argument('<file>')
    .option('-n, --namespace <ns>', `namespace of documents that name none (default: ${DEFAULT_NAMESPACE})`)
    .action(async (file: string, o: { namespace?: string }) => {
      const text = readInput(file);
      const local = parsePolicies(text, { namespace: o.namespace });
      if (local.issues.length) throw issuesError(file, local.issues);
      try {
        const r = await pc().import(text, { namespace: o.namespace });
        const changed = r.changes.filter((c) => c.change !== 'unchanged');
        print(`revision ${r.revision}: ${r.changes.map((c) => `${c.change} ${c.name}`).join(', ')}\n`);
        if (changed.length)
          print(
            `enforced in ${r.enforcedMs.toFixed(1)} ms (${r.stats.policyUpserts} entries written, ${r.stats.policyRemovals} removed)\n`,
          );
      } catch (e) {
        const issues = e instanceof AgentApiError ? (e.details as { issues?: PolicyIssue[] } | undefined)?.issues : undefined;
        if (issues?.length) throw issuesError(file, issues);
        throw e;
      }
    });

  policy
    .command('validate')
    .description('check FILE without importing it (no agent needed)')
    .argument('<file>')
    .option('-n, --namespace <ns>', `namespace of documents that name none (default: ${DEFAULT_NAMESPACE})`)
    .action((file: string, o: { namespace?: string }) => {
      const r = parsePolicies(readInput(file), { namespace: o.namespace });
      if (r.issues.length) throw issuesError(file, r.issues);
      if (!r.policies.length) throw new Error(`${file}: no policy in the input`);
      print(`valid: ${r.policies.map((p) => `${p.kind} ${p.name}`).join(', ')}\n`);
    });

  policy
    .command('get')
    .description('list policies, or show one')
    .argument('[name]')
    .addOption(output())
    .option('--no-headers', 'table without the header line')
    .action(async (name: string | undefined, o: { output: OutputFormat; headers: boolean }) => {
      if (name) {
        const p = await pc().get(name);
        if (o.output === 'json') return print(JSON.stringify(p, null, 2) + '\n');
        print(`# ${p.name}: revision ${p.revision}, updated ${p.updatedAt}\n`);
        return print(stringify(p.source ?? p.policy));
      }
      const l = await pc().list();
      if (o.output === 'json') return print(JSON.stringify(l, null, 2) + '\n');
      if (o.output === 'yaml') return print(stringify(l));
      if (o.headers) print(`revision ${l.revision}\n`);
      print(
        table(
          ['NAME', 'KIND', 'REVISION', 'INGRESS RULES', 'EGRESS RULES', 'UPDATED'],
          l.items.map((p) => [p.name, p.kind, String(p.revision), String(p.rules.ingress), String(p.rules.egress), p.updatedAt]),
          o.headers,
        ),
      );
    });

  policy
    .command('delete')
    .description('delete policies by name, or --all')
    .argument('[names...]')
    .option('--all', 'every policy')
    .action(async (names: string[], o: { all?: boolean }) => {
      if (!o.all && !names.length) throw new Error('name the policies to delete, or pass --all');
      if (o.all && names.length) throw new Error('give names or --all, not both');
      const r = await pc().delete(o.all ? 'all' : names);
      print(
        `revision ${r.revision}: ${r.changes.length ? r.changes.map((c) => `deleted ${c.name}`).join(', ') : 'nothing to delete'}\n`,
      );
      if (r.unknown.length) print(`not found: ${r.unknown.join(', ')}\n`);
    });

  policy
    .command('trace')
    .description('would a new connection be allowed, and by which rule?')
    .option('--src <k=v...>', 'source endpoint labels')
    .option('--dst <k=v...>', 'destination endpoint labels')
    .option('--src-ip <address>', 'source address (an endpoint, the host, or outside)')
    .option('--dst-ip <address>', 'destination address')
    .option('--dst-fqdn <name>', 'destination DNS name (the addresses the DNS proxy learned for it, as toFQDNs sees them)')
    .option('--dns-query <name>', 'check a DNS lookup of NAME against DNS rules (with --dport 53/udp to the DNS server)')
    .option('--dport <port/proto>', 'destination port and protocol, e.g. 80/tcp, 53/udp, 8/icmp', '0/tcp')
    .option('--http-method <method>', 'check an HTTP request against L7 rules: its method (default GET)')
    .option('--http-path <path>', 'its path and query, e.g. /public/a?b=1')
    .option('--http-host <host>', 'its Host header')
    .option('--http-header <"Name: value"...>', 'its headers')
    .addOption(output())
    .action(
      async (
        o: {
          src?: string[];
          dst?: string[];
          srcIp?: string;
          dstIp?: string;
          dstFqdn?: string;
          dnsQuery?: string;
          dport: string;
          output: OutputFormat;
        } & TraceHttpOptions,
      ) => {
        const r = await pc().trace(
          traceSide(o.src, o.srcIp, 'src'),
          traceSide(o.dst, o.dstIp, 'dst', o.dstFqdn),
          o.dport,
          traceHttp(o),
          o.dnsQuery,
        );
        print(render(o.output, r, () => traceText(r)));
        if (r.verdict === 'deny') process.exitCode = 2;
      },
    );

  // The endpoint is named as `membrane endpoint get` names it (numeric id, container id, Docker ids).
  policy
    .command('endpoint')
    .description('identity, enforcement and the policies selecting an endpoint')
    .argument('<endpoint>', ENDPOINT_REF_HELP)
    .argument('[ifName]', 'interface, when the container has several')
    .addOption(output())
    .action(async (ref: string, ifName: string | undefined, o: { output: OutputFormat }) => {
      const e = await findEndpoint(client(), ref, ifName);
      if (o.output !== 'table') return print(render(o.output, await pc().endpoint(attachmentOf(e), e.ifName), () => ''));
      const lines = await endpointPolicyLines(client(), attachmentOf(e), e.ifName);
      if (!lines.length) throw new Error(`endpoint ${e.id} (${attachmentOf(e)}/${e.ifName}) has no policy view`);
      print(keyValues(lines));
    });

  policy
    .command('audit')
    .description("set an endpoint's audit mode (would-be drops are reported, traffic passes)")
    .argument('<endpoint>', ENDPOINT_REF_HELP)
    .argument('[ifName]', 'interface, when the container has several')
    .addOption(
      new Option('--mode <mode>', 'on, off, or default (back to the endpoint metadata)')
        .choices(['on', 'off', 'default'])
        .makeOptionMandatory(),
    )
    .action(async (ref: string, ifName: string | undefined, o: { mode: 'on' | 'off' | 'default' }) => {
      const e = await findEndpoint(client(), ref, ifName);
      const r = await pc().setAudit(attachmentOf(e), e.ifName, o.mode === 'default' ? null : o.mode === 'on');
      print(`endpoint ${e.id} (${attachmentOf(e)}/${e.ifName}): audit ${r.audit ? 'on' : 'off'}\n`);
    });
}
