// `membrane identity list|get` (cilium-dbg identity list|get).
import type { Command } from 'commander';
import type { IdentityView } from '../identity/allocator.ts';
import { formatLabels } from '../identity/labels.ts';
import { PolicyClient } from '../policy/client.ts';
import { idArg, type CliContext } from './context.ts';
import { outputOption, print, render, table } from './output.ts';

type IdentityItem = IdentityView & { endpoints: number };

export function registerIdentityCommands(program: Command, ctx: CliContext): void {
  const identity = program.command('identity').description('security identities');

  identity
    .command('list')
    .description('identities and their labels')
    .addOption(outputOption())
    .option('--no-headers', 'table without the header line')
    .action(async (o: { output: string; headers: boolean }) => {
      const items = await new PolicyClient(ctx.client()).identities();
      print(
        render(o.output, items, () =>
          table(
            ['ID', 'KIND', 'ENDPOINTS', 'LABELS'],
            items.map((i) => [String(i.id), i.kind, String(i.endpoints), formatLabels(i.labels)]),
            o.headers,
          ),
        ),
      );
    });

  identity
    .command('get')
    .description('one identity: its labels, one per line (cilium-dbg identity get)')
    .argument('<id>', 'numeric identity', idArg('identity'))
    .addOption(outputOption())
    .option('--no-headers', 'table without the header line')
    .action(async (id: number, o: { output: string; headers: boolean }) => {
      const item = await ctx.client().request<IdentityItem>('GET', `/v1/identities/${id}`);
      const labels = Object.entries(item.labels)
        .map(([k, v]) => (v === '' ? k : `${k}=${v}`))
        .sort();
      print(
        render(o.output, item, () =>
          table(
            ['ID', 'LABELS'],
            (labels.length ? labels : ['-']).map((l, i) => [i ? '' : String(item.id), l]),
            o.headers,
          ),
        ),
      );
    });
}
