// `membrane`: the operator's view of a node agent.
import { Command, Option } from 'commander';
import { AgentClient, AgentApiError, AgentUnreachableError, DEFAULT_SOCKET } from '../api/client.ts';
import type { Endpoint } from '../types.ts';
import { VERSION } from '../version.ts';
import { keyValues, labelsText, table, type OutputFormat } from './output.ts';
import { endpointPolicyLines, registerPolicyCommands } from './policy.ts';
import { registerObserveCommands } from './observe.ts';
import { clusterStatusLines, registerClusterCommands } from './cluster.ts';

const program = new Command('membrane')
  .description('Membrane: eBPF container networking and network security')
  .version(VERSION)
  .option('--socket <path>', 'agent API socket (env MEMBRANE_SOCKET)', process.env.MEMBRANE_SOCKET ?? DEFAULT_SOCKET)
  // Global options go before the verb; verbs may then reuse option names (observe and its subcommands).
  .enablePositionalOptions()
  .showHelpAfterError();

const outputOption = () => new Option('-o, --output <format>', 'json or table').choices(['json', 'table']).default('table');
const client = () => new AgentClient({ socketPath: program.opts().socket, timeoutMs: 15_000 });
const print = (text: string): void => { process.stdout.write(text); };

program.command('status').description('agent status').addOption(outputOption()).action(async (o: { output: OutputFormat }) => {
  const s = await client().status();
  if (o.output === 'json') return print(JSON.stringify(s, null, 2) + '\n');
  print(keyValues([
    ['Agent', `ok (version ${s.version}, node ${s.nodeName}, up ${s.uptimeSeconds}s)`],
    ['Endpoints', String(s.endpoints)],
    ['Networks', String(s.networks)],
    ['Datapath', `${s.datapath.attach}, pinned in ${s.datapath.pinDir}, gateways on ${s.datapath.hostDevice}`],
    ['State', s.stateDir],
    ['Socket', s.socket],
    ...clusterStatusLines(s.cluster),
  ]));
});

const endpoint = program.command('endpoint').description('endpoints on this node');
endpoint.command('list').description('list endpoints').addOption(outputOption())
  .option('--container <id>', 'only this container').action(async (o: { output: OutputFormat; container?: string }) => {
    const items = await client().listEndpoints({ containerId: o.container });
    if (o.output === 'json') return print(JSON.stringify(items, null, 2) + '\n');
    print(table(['ID', 'CONTAINER', 'IFACE', 'NETWORK', 'IPV4', 'IPV6', 'HOST IFACE', 'LABELS'],
      items.map((e) => [String(e.id), shortId(e.containerId), e.ifName, e.network, ipOf(e, 4), ipOf(e, 6), e.hostIfName, labelsText(e.labels)])));
  });
endpoint.command('get').description('show one endpoint').argument('<containerId>').argument('[ifName]', 'interface', 'eth0')
  .addOption(outputOption()).action(async (containerId: string, ifName: string, o: { output: OutputFormat }) => {
    const e = await client().getEndpoint(containerId, ifName);
    if (o.output === 'json') return print(JSON.stringify(e, null, 2) + '\n');
    const policy = await endpointPolicyLines(client(), containerId, ifName);
    print(keyValues([
      ['ID', String(e.id)], ['Container', e.containerId], ['Interface', `${e.ifName} (${e.mac}, mtu ${e.mtu})`],
      ['Netns', e.netns ?? '(host, moved by the runtime)'], ['Network', e.network],
      ['Addresses', e.ips.map((ip) => `${ip.address} via ${ip.gateway}`).join(', ')],
      ['Host side', `${e.hostIfName} (ifindex ${e.hostIfIndex}, ${e.hostMac})`],
      ...(policy.length ? policy : [['Identity', String(e.identity)] as [string, string]]),
      ['Labels', labelsText(e.labels)], ['Created', e.createdAt],
    ]));
  });

const ipam = program.command('ipam').description('address management');
ipam.command('list').description('pools and allocations').addOption(outputOption()).action(async (o: { output: OutputFormat }) => {
  const pools = await client().ipam();
  if (o.output === 'json') return print(JSON.stringify(pools, null, 2) + '\n');
  print(table(['POOL', 'SUBNET', 'GATEWAY', 'USED', 'SIZE'],
    pools.flatMap((p) => p.subnets.map((s) => [p.name, s.cidr, s.gateway, String(s.allocated), s.size]))));
  const allocs = pools.flatMap((p) => p.allocations.map((a) => [p.name, a.ip, a.owner]));
  if (allocs.length) print('\n' + table(['POOL', 'ADDRESS', 'OWNER'], allocs));
});

const network = program.command('network').description('networks (address pools)');
network.command('list').description('list networks').addOption(outputOption()).action(async (o: { output: OutputFormat }) => {
  const items = await client().listNetworks();
  if (o.output === 'json') return print(JSON.stringify(items, null, 2) + '\n');
  print(table(['NAME', 'SUBNETS', 'GATEWAYS', 'MTU'],
    items.map((n) => [n.name, n.subnets.map((s) => s.cidr).join(','), n.subnets.map((s) => s.gateway).join(','), String(n.mtu)])));
});

registerPolicyCommands(program, client);
registerObserveCommands(program);
registerClusterCommands(program, client, outputOption);

function ipOf(e: Endpoint, family: 4 | 6): string {
  return e.ips.find((ip) => ip.family === family)?.address ?? '-';
}

function shortId(id: string): string {
  return /^[0-9a-f]{64}$/.test(id) ? id.slice(0, 12) : id;
}

program.parseAsync(process.argv).catch((e: unknown) => {
  if (e instanceof AgentUnreachableError) {
    process.stderr.write(`membrane: ${e.message}\n  hint: start the agent, or point --socket / MEMBRANE_SOCKET at it\n`);
  } else if (e instanceof AgentApiError) {
    process.stderr.write(`membrane: ${e.message} (${e.code})\n`);
  } else {
    process.stderr.write(`membrane: ${(e as Error).message}\n`);
  }
  process.exit(1);
});
