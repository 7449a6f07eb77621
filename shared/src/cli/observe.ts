// `membrane observe`: flows from the agent's observer (gRPC), live or recent, filtered, printed as
// compact lines, JSON or a table; `membrane observe status` for the observer's counters.
import { Command, Option } from 'commander';
import { DEFAULT_OBSERVER_SOCKET, ObserverClient, ObserverUnreachableError } from '../flows/client.ts';
import { FilterError } from '../flows/filter.ts';
import { formatResponse, TABLE_HEADERS, tableLine, type FlowOutput } from '../flows/format.ts';
import { buildRequest, DEFAULT_LAST, type ObserveFlags } from '../flows/request.ts';
import { keyValues } from './format.ts';

const collect = (v: string, prev: string[] = []) => [...prev, ...v.split(',').map((s) => s.trim()).filter(Boolean)];
// Label selectors may contain commas ("app=a,tier=web" = both): one flag, one selector.
const collectWhole = (v: string, prev: string[] = []) => [...prev, v];
const collectInt = (v: string, prev: number[] = []) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`"${v}" is not an endpoint id`);
  return [...prev, n];
};
const count = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`"${v}" is not a count`);
  return n;
};

interface CliOptions extends ObserveFlags {
  output: FlowOutput;
  observerSocket: string;
  server?: string;
  utc?: boolean;
}

function target(o: { observerSocket: string; server?: string }): string {
  return o.server ?? o.observerSocket;
}

function fail(e: unknown): never {
  if (e instanceof ObserverUnreachableError) {
    process.stderr.write(`membrane: ${e.message}\n  hint: is the agent running? point --observer-socket / MEMBRANE_OBSERVER_SOCKET (or --server) at its observer\n`);
  } else if (e instanceof FilterError) {
    process.stderr.write(`membrane observe: ${e.message}\n`);
  } else {
    process.stderr.write(`membrane observe: ${(e as Error).message}\n`);
  }
  process.exit(1);
}

const socketOption = () => new Option('--observer-socket <path>', 'observer unix socket (env MEMBRANE_OBSERVER_SOCKET)')
  .default(process.env.MEMBRANE_OBSERVER_SOCKET ?? DEFAULT_OBSERVER_SOCKET);
const serverOption = () => new Option('--server <host:port>', 'observer over TCP instead of the unix socket');

export function registerObserveCommands(program: Command): void {
  const observe = program.command('observe')
    .description(`show flows and drops: the last ${DEFAULT_LAST} by default, --follow for live ones`)
    .option('-f, --follow', 'keep streaming new flows')
    .option('--last <n>', `the newest N matching flows (default ${DEFAULT_LAST}; 0 = all held)`, count)
    .option('--first <n>', 'the oldest N matching flows held', count)
    .option('--since <time>', 'flows at or after: a duration ago (30s, 5m, 1h) or a date/time')
    .option('--until <time>', 'flows up to: a duration ago or a date/time')
    .option('--verdict <v>', 'FORWARDED, DROPPED or AUDIT (repeatable)', collect)
    .option('-t, --type <t>', 'drop or trace (new and ended connections); also flow-new, flow-end', collect)
    .option('--protocol <p>', 'tcp, udp, sctp, icmp, icmpv4, icmpv6 or a number', collect)
    .option('--ip <addr>', 'address or CIDR on either end', collect)
    .option('--from-ip <addr>', 'source address or CIDR', collect)
    .option('--to-ip <addr>', 'destination address or CIDR', collect)
    .option('--port <port>', 'port or range on either end', collect)
    .option('--from-port <port>', 'source port or range', collect)
    .option('--to-port <port>', 'destination port or range', collect)
    .option('--label <selector>', 'label selector (k=v, k, !k; comma = and) on either end', collectWhole)
    .option('--from-label <selector>', 'source label selector', collectWhole)
    .option('--to-label <selector>', 'destination label selector', collectWhole)
    .option('--endpoint <id>', 'endpoint id on either end', collectInt)
    .option('--from-endpoint <id>', 'source endpoint id', collectInt)
    .option('--to-endpoint <id>', 'destination endpoint id', collectInt)
    .option('--pod <[ns/]name>', 'pod (name prefix) on either end', collect)
    .option('--from-pod <[ns/]name>', 'source pod', collect)
    .option('--to-pod <[ns/]name>', 'destination pod', collect)
    .option('--direction <d>', 'ingress (towards the observing endpoint) or egress', collect)
    .option('--drop-reason <r>', 'POLICY_DENIED, INVALID_PACKET, CT_MAP_FULL, UNKNOWN_ENDPOINT, SOURCE_SPOOFED', collect)
    .option('--policy <name>', 'flows allowed or denied by this policy', collect)
    .option('--node <name>', 'node name', collect)
    .addOption(new Option('-o, --output <format>', 'output format').choices(['compact', 'json', 'table']).default('compact'))
    .option('--utc', 'print times in UTC')
    .addOption(socketOption())
    .addOption(serverOption())
    .action(async (o: CliOptions) => {
      let req;
      try { req = buildRequest(o); } catch (e) { fail(e); }
      const client = new ObserverClient(target(o));
      const stream = client.flows(req);
      const stop = () => { stream.cancel(); };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      try {
        if (o.output === 'table') process.stdout.write(tableLine(TABLE_HEADERS) + '\n');
        for await (const res of stream.responses) {
          if (!process.stdout.write(formatResponse(res, o.output, o.utc) + '\n')) {
            await new Promise((r) => process.stdout.once('drain', r));
          }
        }
      } catch (e) {
        fail(e);
      } finally {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
        client.close();
      }
    });

  observe.command('status').description('flows held, seen and lost by the observer')
    .addOption(new Option('-o, --output <format>', 'json or table').choices(['json', 'table']).default('table'))
    .addOption(socketOption())
    .addOption(serverOption())
    .action(async (_o: unknown, cmd: Command) => {
      // The parent shares these options and, without positional options, commander hands them to
      // whichever command knows them: take what the user gave on either, else the default.
      const pick = <T>(name: string): T => {
        for (const c of [cmd, observe]) if (c.getOptionValueSource(name) === 'cli') return c.getOptionValue(name) as T;
        return cmd.getOptionValue(name) as T;
      };
      const output = pick<string>('output') === 'json' ? 'json' : 'table';
      const client = new ObserverClient(pick<string | undefined>('server') ?? pick<string>('observerSocket'));
      try {
        const s = await client.status();
        if (output === 'json') { process.stdout.write(JSON.stringify(s, null, 2) + '\n'); return; }
        process.stdout.write(keyValues([
          ['Observer', `ok (node ${s.nodeName}, version ${s.version}, up ${Math.round(s.uptimeNs / 1e9)}s)`],
          ['Flows', `${s.numFlows}/${s.maxFlows} held, ${s.seenFlows} seen, ${s.flowsRate.toFixed(1)}/s`],
          ['Lost events', `${s.lostEvents} in the datapath, ${s.lostEventsAgent} in the agent`],
          ['Flow events', s.flowEventsEnabled ? 'on' : 'off (--flow-events off)'],
        ]));
      } catch (e) {
        fail(e);
      } finally {
        client.close();
      }
    });
}
