// Read-only look at the container side and the host veth, for CHECK when the agent cannot inspect for
// us (no ?check=1). Spawns nsenter/ip/tc: acceptable for CHECK only, which is rare.
import type { Endpoint } from '../../shared/src/types.ts';
import { childProcess } from './lazy.ts';
import { normalizeIfAddr } from '../../shared/src/net/index.ts';

interface IpAddrJson {
  ifname: string;
  address?: string;
  mtu?: number;
  operstate?: string;
  flags?: string[];
  addr_info?: { family: string; local: string; prefixlen: number }[];
}
interface IpRouteJson {
  dst: string;
  gateway?: string;
  dev?: string;
}

function run(cmd: string, args: string[]): { ok: boolean; out: string; err: string } {
  const r = childProcess().spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000 });
  return { ok: r.status === 0, out: r.stdout ?? '', err: (r.stderr || r.error?.message) ?? '' };
}

/** Problems with the container interface, its addresses and routes (empty = as the endpoint says). */
export function inspectContainerSide(ep: Endpoint, netns: string): string[] {
  const ns = `--net=${netns}`;
  const link = run('nsenter', [ns, 'ip', '-j', 'addr', 'show', 'dev', ep.ifName]);
  if (!link.ok) return [`interface ${ep.ifName} not found in ${netns}: ${link.err.trim()}`];
  const [dev] = JSON.parse(link.out) as IpAddrJson[];
  const problems: string[] = [];
  if (!dev) return [`interface ${ep.ifName} not found in ${netns}`];
  if (!dev.flags?.includes('UP')) problems.push(`${ep.ifName} in ${netns} is down`);
  if (dev.address?.toLowerCase() !== ep.mac.toLowerCase())
    problems.push(`${ep.ifName} has MAC ${dev.address}, expected ${ep.mac}`);
  if (dev.mtu !== ep.mtu) problems.push(`${ep.ifName} has MTU ${dev.mtu}, expected ${ep.mtu}`);
  const have = new Set((dev.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`));
  for (const ip of ep.ips) if (!have.has(ip.address)) problems.push(`address ${ip.address} missing on ${ep.ifName} in ${netns}`);
  const routes: IpRouteJson[] = [];
  for (const fam of ['-4', '-6']) {
    const r = run('nsenter', [ns, 'ip', fam, '-j', 'route', 'show']);
    if (r.ok && r.out.trim()) routes.push(...(JSON.parse(r.out) as IpRouteJson[]));
  }
  for (const want of ep.routes) {
    const found = routes.some(
      (r) => sameDst(r.dst, want.dst) && (!want.gw || r.gateway === want.gw) && (!r.dev || r.dev === ep.ifName),
    );
    if (!found) problems.push(`route ${want.dst}${want.gw ? ` via ${want.gw}` : ''} missing in ${netns}`);
  }
  return problems;
}

/** Problems with the host veth and its BPF programs (tc ingress + egress). */
export function inspectHostSide(ep: Endpoint): string[] {
  const link = run('ip', ['-j', 'link', 'show', 'dev', ep.hostIfName]);
  if (!link.ok) return [`host interface ${ep.hostIfName} is missing`];
  const problems: string[] = [];
  for (const dir of ['ingress', 'egress']) {
    const f = run('tc', ['filter', 'show', 'dev', ep.hostIfName, dir]);
    if (!/\bbpf\b/.test(f.out)) problems.push(`no BPF program on tc ${dir} of ${ep.hostIfName}`);
  }
  return problems;
}

function sameDst(have: string, want: string): boolean {
  if (have === want) return true;
  const norm = (d: string) => (d === 'default' ? (want.includes(':') ? '::/0' : '0.0.0.0/0') : normalizeIfAddr(d));
  try {
    return norm(have) === norm(want);
  } catch {
    return false;
  }
}
