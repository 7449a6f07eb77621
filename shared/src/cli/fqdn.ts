// `membrane fqdn cache list` (cilium-dbg fqdn cache list): what the DNS proxy learned, name by name:
// addresses, TTLs, expiry, the FQDN identity the address has in the ipcache, and the endpoints that
// looked the name up.
import type { Command } from 'commander';
import type { FqdnCacheEntryView } from '../agent/dns.ts';
import type { CliContext } from './context.ts';
import { outputOption, print, render, table } from './output.ts';

export function registerFqdnCommands(program: Command, ctx: CliContext): void {
  const fqdn = program.command('fqdn').description('DNS names learned through the DNS proxy (toFQDNs)');
  const cache = fqdn.command('cache').description('the name cache');
  cache
    .command('list')
    .description('names, addresses, TTLs and the endpoints using them')
    .option('--name <name>', 'only this name')
    .option('--endpoint <id>', 'only names this endpoint looked up')
    .addOption(outputOption())
    .option('--no-headers', 'table without the header line')
    .action(async (o: { name?: string; endpoint?: string; output: string; headers: boolean }) => {
      const q = new URLSearchParams();
      if (o.name) q.set('name', o.name);
      if (o.endpoint) {
        if (!/^\d+$/.test(o.endpoint)) throw new Error(`--endpoint: "${o.endpoint}" is not an endpoint id (a number)`);
        q.set('endpoint', o.endpoint);
      }
      const items = await ctx.client().request<FqdnCacheEntryView[]>('GET', `/v1/fqdn/cache${q.size ? `?${q}` : ''}`);
      print(
        render(o.output, items, () =>
          table(
            ['NAME', 'ADDRESS', 'TTL', 'EXPIRES', 'IDENTITY', 'ENDPOINTS'],
            items.map((e) => [
              e.name,
              e.ip,
              String(e.ttl),
              e.expiresAt,
              e.identity !== undefined ? String(e.identity) : '-',
              e.endpoints.join(',') || '-',
            ]),
            o.headers,
          ),
        ),
      );
    });
}
