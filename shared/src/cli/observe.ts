// `membrane observe`: flows from the agent's Hubble-compatible observer (gRPC), with `hubble
// observe`'s flags and output formats; `observe agent-events`, `observe status`, `observe nodes`
// and `observe namespaces` for the rest of the observer API. Any Hubble server works as --server.
import fs from 'node:fs';
import { type Command, Option } from 'commander';
import { DEFAULT_OBSERVER_SOCKET, ObserverClient, ObserverUnreachableError, type ObserverTls } from '../flows/client.ts';
import { FilterError } from '../flows/filter.ts';
import { flowPrinter, jsonLine, type FlowOutput } from '../flows/format.ts';
import { agentEventLine, namespaceRows, nodeRows, statusLines } from '../flows/format-events.ts';
import { buildRequest, DEFAULT_LAST, parseTime, type FilterFlag } from '../flows/request.ts';
import type { GetAgentEventsRequest } from '../flows/types.ts';
import type { CliContext } from './context.ts';
import { printTable } from './output.ts';

const count = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`"${v}" is not a count`);
  return n;
};
const many = (v: string, prev: string[] = []) => [...prev, v];

function fail(e: unknown): never {
  if (e instanceof ObserverUnreachableError) {
    process.stderr.write(
      `membrane: ${e.message}\n  hint: is the agent running? point --observer-socket / MEMBRANE_OBSERVER_SOCKET (or --server) at its observer\n`,
    );
  } else if (e instanceof FilterError) {
    process.stderr.write(`membrane observe: ${e.message}\n`);
  } else {
    process.stderr.write(`membrane observe: ${(e as Error).message}\n`);
  }
  process.exit(1);
}

const serverOptions = (cmd: Command) =>
  cmd
    .addOption(
      new Option(
        '--observer-socket <path>',
        `observer unix socket (env MEMBRANE_OBSERVER_SOCKET; default: the one the agent at --socket serves, else ${DEFAULT_OBSERVER_SOCKET})`,
      ),
    )
    .addOption(new Option('--server <address>', 'a Hubble-compatible observer over TCP (host:port) instead of the unix socket'))
    .option('--tls', 'TLS to --server (implied by the other --tls-* flags)')
    .option(
      '--tls-ca-cert-files <files>',
      "CA certificates (PEM) the server's certificate must come from (comma-separated or repeated; default: the system's)",
      (v: string, p: string[] = []) => [...p, ...v.split(',').filter(Boolean)],
    )
    .option(
      '--tls-client-cert-file <file>',
      'client certificate (PEM), for a server that asks for one (membrane-relay, agents with --observer-tls-client-ca-files)',
    )
    .option('--tls-client-key-file <file>', 'its key')
    .option('--tls-server-name <name>', "the name the server's certificate must carry, when it is not --server's host");

interface ServerOptions {
  observerSocket?: string;
  server?: string;
  tls?: boolean;
  tlsCaCertFiles?: string[];
  tlsClientCertFile?: string;
  tlsClientKeyFile?: string;
  tlsServerName?: string;
}

/** --tls and --tls-* (hubble's flags): TLS towards --server, or undefined for plaintext. */
export function observerTls(
  o: ServerOptions,
  read: (file: string) => Buffer = (f) => fs.readFileSync(f),
): ObserverTls | undefined {
  if (!o.tls && !o.tlsCaCertFiles?.length && !o.tlsClientCertFile && !o.tlsClientKeyFile && !o.tlsServerName) return undefined;
  if (!o.server) throw new Error('--tls and --tls-* secure --server HOST:PORT: give it too (a unix socket has no TLS)');
  if (!!o.tlsClientCertFile !== !!o.tlsClientKeyFile)
    throw new Error('--tls-client-cert-file and --tls-client-key-file go together');
  const load = (flag: string, file: string) => {
    try {
      return read(file);
    } catch (e) {
      throw new Error(
        `${flag} ${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`,
      );
    }
  };
  return {
    ...(o.tlsCaCertFiles?.length ? { ca: Buffer.concat(o.tlsCaCertFiles.map((f) => load('--tls-ca-cert-files', f))) } : {}),
    ...(o.tlsClientCertFile
      ? { cert: load('--tls-client-cert-file', o.tlsClientCertFile), key: load('--tls-client-key-file', o.tlsClientKeyFile!) }
      : {}),
    ...(o.tlsServerName ? { serverName: o.tlsServerName } : {}),
  };
}

/** --server, else --observer-socket / MEMBRANE_OBSERVER_SOCKET, else the observer the agent at --socket
 *  reports (an agent with its own sockets needs only --socket), else the default socket. */
async function target(o: ServerOptions, ctx: CliContext): Promise<string> {
  const given = o.server ?? o.observerSocket ?? process.env.MEMBRANE_OBSERVER_SOCKET;
  if (given) return given;
  try {
    return (await ctx.client().status()).observer?.socket ?? DEFAULT_OBSERVER_SOCKET;
  } catch {
    return DEFAULT_OBSERVER_SOCKET;
  }
}

async function withClient<T>(o: ServerOptions, ctx: CliContext, fn: (c: ObserverClient) => Promise<T>): Promise<T> {
  let tls: ObserverTls | undefined;
  try {
    tls = observerTls(o);
  } catch (e) {
    fail(e);
  }
  const client = new ObserverClient(await target(o, ctx), tls ? { tls } : {});
  try {
    return await fn(client);
  } catch (e) {
    return fail(e);
  } finally {
    client.close();
  }
}

/** Filter flags, in hubble's words: [flags, description, takes a value]. */
const FILTERS: [string, string, boolean][] = [
  ['--not', 'negate the next filter flag (--not --from-ip 10.0.0.1)', false],
  ['--uuid <uuid>', 'the flow with this identifier', true],
  ['--node-name <pattern>', 'flows observed on these nodes ("node-*", "cluster/node-*")', true],
  ['--from-cluster <name>', 'flows from endpoints in this cluster', true],
  ['--cluster <name>', 'flows from or to endpoints in this cluster', true],
  ['--to-cluster <name>', 'flows to endpoints in this cluster', true],
  ['--protocol <proto>', 'L4 or L7 protocol: tcp, udp, sctp, icmp, icmpv4, icmpv6, http, dns', true],
  ['--tcp-flags <flags>', 'TCP flags that must all be set ("syn", "syn,ack")', true],
  [
    '-t, --type <type>',
    'event type[:subtype]: drop, trace[:to-endpoint|from-endpoint], policy-verdict, l7; Membrane: flow-new, flow-drop, flow-end',
    true,
  ],
  ['--verdict <verdict>', 'FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR', true],
  ['--drop-reason-desc <reason>', 'drop reason (POLICY_DENIED, POLICY_DENY, INVALID_SOURCE_IP, ...)', true],
  ['--from-ip <addr>', 'source address or CIDR', true],
  ['--ip <addr>', 'address or CIDR on either end', true],
  ['--to-ip <addr>', 'destination address or CIDR', true],
  ['-4, --ipv4', 'IPv4 flows only', false],
  ['-6, --ipv6', 'IPv6 flows only', false],
  ['--ip-version <v>', 'v4, v6 or none', true],
  ['--from-pod <[ns/]pod>', 'source pod name prefix (no namespace: "default")', true],
  ['--pod <[ns/]pod>', 'pod name prefix on either end', true],
  ['--to-pod <[ns/]pod>', 'destination pod name prefix', true],
  ['--from-namespace <ns>', 'source namespace', true],
  ['-n, --namespace <ns>', 'namespace on either end', true],
  ['--to-namespace <ns>', 'destination namespace', true],
  ['--from-all-namespaces', 'source in any namespace', false],
  ['-A, --all-namespaces', 'either end in any namespace', false],
  ['--to-all-namespaces', 'destination in any namespace', false],
  ['--from-label <selector>', 'source label selector ("app=web", "k8s:app in (a,b)", "!tier")', true],
  ['-l, --label <selector>', 'label selector on either end', true],
  ['--to-label <selector>', 'destination label selector', true],
  ['--from-port <port>', 'source port (or range a-b)', true],
  ['--port <port>', 'port on either end', true],
  ['--to-port <port>', 'destination port', true],
  ['--from-identity <id>', 'source security identity (number or reserved name: host, world, ...)', true],
  ['--identity <id>', 'security identity on either end', true],
  ['--to-identity <id>', 'destination security identity', true],
  ['--from-endpoint <id>', 'source endpoint id (Membrane)', true],
  ['--endpoint <id>', 'endpoint id on either end (Membrane)', true],
  ['--to-endpoint <id>', 'destination endpoint id (Membrane)', true],
  ['--traffic-direction <dir>', 'ingress or egress (seen from the observing endpoint)', true],
  ['--interface <name>', 'observed on this host interface (name or index)', true],
  ['--policy <name>', 'allowed or denied by this policy ("name" or "ns/name"; Membrane)', true],
  ['--from-fqdn <pattern>', 'source DNS name ("*.example.com")', true],
  ['--fqdn <pattern>', 'DNS name on either end', true],
  ['--to-fqdn <pattern>', 'destination DNS name', true],
  ['--http-status <code>', 'HTTP status code or prefix ("404", "5+")', true],
  ['--http-method <method>', 'HTTP method', true],
  ['--http-path <regex>', 'HTTP path regular expression', true],
  ['--http-url <regex>', 'HTTP URL regular expression', true],
  ['--http-header <k:v>', 'HTTP header name:value', true],
  ['--encrypted', 'encrypted flows only (Membrane encrypts none)', false],
  ['--unencrypted', 'unencrypted flows only', false],
  ['--from-service <svc>', 'refused by Membrane: it has no services', true],
  ['--service <svc>', 'refused by Membrane: it has no services', true],
  ['--to-service <svc>', 'refused by Membrane: it has no services', true],
  ['--from-workload <wl>', 'refused by Membrane: workloads are not known', true],
  ['--workload <wl>', 'refused by Membrane: workloads are not known', true],
  ['--to-workload <wl>', 'refused by Membrane: workloads are not known', true],
  ['--snat-ip <addr>', 'refused by Membrane: it does no SNAT', true],
  ['--trace-id <id>', 'refused by Membrane: trace context is not read', true],
  ['--node-label <selector>', 'refused by Membrane: nodes carry no labels in flows', true],
];

interface FlowsOptions {
  follow?: boolean;
  last?: number;
  first?: number;
  all?: boolean;
  since?: string;
  until?: string;
  allowlist?: string[];
  denylist?: string[];
  fieldMask?: string[];
  printRawFilters?: boolean;
  output: FlowOutput;
  utc?: boolean;
  printNodeName?: boolean;
  printPolicyNames?: boolean;
  numeric?: boolean;
  headers?: boolean;
  observerSocket?: string;
  server?: string;
}

export function registerObserveCommands(program: Command, ctx: CliContext): void {
  const observe = program
    .command('observe')
    .description(`flows and drops, as \`hubble observe\`: the last ${DEFAULT_LAST} by default, -f for live ones`)
    .enablePositionalOptions()
    .option('-f, --follow', 'keep streaming new flows')
    .option('--last <n>', `the newest N matching flows (default ${DEFAULT_LAST})`, count)
    .option('--first <n>', 'the oldest N matching flows held', count)
    .option('--all', 'every flow held')
    .option('--since <time>', 'flows at or after: a duration ago (30s, 5m, 1h) or a date/time')
    .option('--until <time>', 'flows up to: a duration ago or a date/time');
  const flags: FilterFlag[] = [];
  for (const [spec, desc, takesValue] of FILTERS) {
    observe.option(spec, desc);
    const name = /--([a-z0-9-]+)/.exec(spec)![1];
    observe.on(`option:${name}`, (v?: string) => {
      flags.push([name, takesValue ? String(v) : 'true']);
    });
  }
  observe
    .option('--allowlist <json>', 'a FlowFilter as JSON (repeatable), as hubble --allowlist', many)
    .option('--denylist <json>', 'a FlowFilter as JSON to leave out (repeatable)', many)
    .option('--field-mask <paths>', 'only these flow fields (comma-separated proto paths)', (v: string, p: string[] = []) => [
      ...p,
      ...v.split(',').filter(Boolean),
    ])
    .option('--print-raw-filters', 'print the filters as JSON and exit')
    .addOption(
      new Option('-o, --output <format>', 'output format')
        .choices(['compact', 'dict', 'json', 'jsonpb', 'table'])
        .default('compact'),
    )
    .option('--no-headers', 'table output without the header line')
    .option('--print-node-name', 'print the node name of each flow')
    .option('--print-policy-names', 'name the policies behind ALLOWED/DENIED')
    .option('--numeric', 'addresses instead of pod names')
    .option('--utc', 'times in UTC');
  serverOptions(observe).action(async (o: FlowsOptions) => {
    let req;
    try {
      req = buildRequest(o, flags);
    } catch (e) {
      fail(e);
    }
    if (o.printRawFilters) {
      process.stdout.write(`${JSON.stringify({ allowlist: req.whitelist ?? [], denylist: req.blacklist ?? [] }, null, 2)}\n`);
      return;
    }
    const print = flowPrinter(o.output, {
      utc: o.utc,
      nodeName: o.printNodeName,
      policyNames: o.printPolicyNames,
      numeric: o.numeric,
      headers: o.headers,
    });
    await withClient(o, ctx, async (client) => {
      const stream = client.flows(req);
      const stop = () => {
        stream.cancel();
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      try {
        for await (const res of stream.responses) {
          if (!process.stdout.write(print(res) + '\n')) await new Promise((r) => process.stdout.once('drain', r));
        }
      } finally {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
      }
    });
  });

  serverOptions(
    observe
      .command('agent-events')
      .description('agent events: start, policy and endpoint changes (hubble observe agent-events)')
      .option('-f, --follow', 'keep streaming new events')
      .option('--last <n>', 'the newest N events', count)
      .option('--first <n>', 'the oldest N events', count)
      .option('--since <time>', 'events at or after')
      .option('--until <time>', 'events up to')
      .addOption(new Option('-o, --output <format>', 'output format').choices(['compact', 'json', 'jsonpb']).default('compact'))
      .option('--utc', 'times in UTC'),
  ).action(
    async (o: {
      follow?: boolean;
      last?: number;
      first?: number;
      since?: string;
      until?: string;
      output: string;
      utc?: boolean;
      observerSocket?: string;
      server?: string;
    }) => {
      let req: GetAgentEventsRequest;
      try {
        if (o.first !== undefined && (o.last !== undefined || o.follow))
          throw new FilterError('--first cannot be combined with --last or --follow');
        req = {
          ...(o.follow ? { follow: true } : {}),
          ...(o.first !== undefined ? { first: true, number: o.first } : o.last !== undefined ? { number: o.last } : {}),
          ...(o.since ? { since: parseTime(o.since) } : {}),
          ...(o.until ? { until: parseTime(o.until) } : {}),
        };
      } catch (e) {
        fail(e);
      }
      await withClient(o, ctx, async (client) => {
        const stream = client.agentEvents(req);
        process.once('SIGINT', () => stream.cancel());
        for await (const res of stream.responses) {
          process.stdout.write(
            (o.output === 'compact' ? agentEventLine(res, o.utc) : jsonLine('observer.GetAgentEventsResponse', res)) + '\n',
          );
        }
      });
    },
  );

  serverOptions(
    observe
      .command('status')
      .description('flows held, seen and lost by the observer (hubble status)')
      .addOption(new Option('-o, --output <format>', 'output format').choices(['json', 'yaml', 'table']).default('table')),
  ).action(async (o: { output: string; observerSocket?: string; server?: string }) => {
    await withClient(o, ctx, async (client) => {
      const health = await client.healthCheck();
      const s = await client.status();
      if (o.output !== 'table') return printTable(o.output, s, [], []);
      process.stdout.write(
        `Healthcheck (via ${client.target}): ${health === 'SERVING' ? 'Ok' : health}\n${statusLines(s).join('\n')}\n`,
      );
    });
  });

  serverOptions(
    observe
      .command('nodes')
      .description('nodes the observer reports (hubble list nodes)')
      .addOption(new Option('-o, --output <format>', 'output format').choices(['json', 'yaml', 'table']).default('table'))
      .option('--no-headers', 'table output without the header line'),
  ).action(async (o: { output: string; headers: boolean; observerSocket?: string; server?: string }) => {
    await withClient(o, ctx, async (client) => {
      const nodes = await client.nodes();
      printTable(o.output, nodes, ['NAME', 'STATUS', 'AGE', 'FLOWS/S', 'CURRENT/MAX-FLOWS'], nodeRows(nodes), o.headers);
    });
  });

  serverOptions(
    observe
      .command('namespaces')
      .description('namespaces with flows in the last hour (hubble list namespaces)')
      .addOption(new Option('-o, --output <format>', 'output format').choices(['json', 'yaml', 'table']).default('table'))
      .option('--no-headers', 'table output without the header line'),
  ).action(async (o: { output: string; headers: boolean; observerSocket?: string; server?: string }) => {
    await withClient(o, ctx, async (client) => {
      const items = await client.namespaces();
      printTable(o.output, items, ['CLUSTER', 'NAMESPACE'], namespaceRows(items), o.headers);
    });
  });
}
