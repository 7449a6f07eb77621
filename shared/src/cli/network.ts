// `membrane network list` and `membrane ipam list`.
import type { Command } from 'commander';
import type { CliContext } from './context.ts';
import { outputOption, print, render, shortIds, table } from './output.ts';

export function registerNetworkCommands(program: Command, ctx: CliContext): void {
  const network = program.command('network').description('networks (address pools)');
  network
    .command('list')
    .description('list networks')
    .addOption(outputOption())
    .option('--no-headers', 'table without the header line')
    .action(async (o: { output: string; headers: boolean }) => {
      const items = await ctx.client().listNetworks();
      print(
        render(o.output, items, () =>
          table(
            ['NAME', 'SUBNETS', 'GATEWAYS', 'MTU'],
            items.map((n) => [
              n.dockerName ? `${n.name} (${n.dockerName})` : n.name,
              n.subnets.map((s) => s.cidr).join(','),
              n.subnets.map((s) => s.gateway).join(','),
              String(n.mtu),
            ]),
            o.headers,
          ),
        ),
      );
    });

  const ipam = program.command('ipam').description('address management');
  ipam
    .command('list')
    .description('pools and allocations')
    .addOption(outputOption())
    .option('--no-headers', 'tables without the header line')
    .action(async (o: { output: string; headers: boolean }) => {
      const pools = await ctx.client().ipam();
      print(
        render(o.output, pools, () => {
          const subnets = table(
            ['POOL', 'SUBNET', 'GATEWAY', 'USED', 'SIZE'],
            pools.flatMap((p) => p.subnets.map((s) => [p.name, s.cidr, s.gateway, String(s.allocated), s.size])),
            o.headers,
          );
          const allocs = pools.flatMap((p) => p.allocations.map((a) => [p.name, a.ip, shortIds(a.owner)]));
          return allocs.length ? `${subnets}\n${table(['POOL', 'ADDRESS', 'OWNER'], allocs, o.headers)}` : subnets;
        }),
      );
    });
}
