// STATUS: can an ADD be served now? The agent answers, its address pool has room, and a delegated IPAM
// plugin that speaks STATUS agrees. Otherwise code 50 with the reason.
import { cmpVersion } from '../config.ts';
import { ipamType, type Invocation } from '../context.ts';
import { delegateVersions } from '../delegate.ts';
import { CniCode, CniError } from '../errors.ts';

export async function cmdStatus(inv: Invocation): Promise<string> {
  const agent = inv.agent(5_000);
  try {
    await agent.healthz();
  } catch (e) {
    throw new CniError(CniCode.NOT_AVAILABLE, `membrane agent at ${agent.socketPath} is not ready`, (e as Error).message);
  }
  const type = ipamType(inv);
  if (type) delegateStatus(inv, type);
  else await requirePoolRoom(inv);
  return '';
}

async function requirePoolRoom(inv: Invocation): Promise<void> {
  const name = inv.conf.network ?? 'default';
  let pools;
  try {
    pools = await inv.agent(5_000).ipam();
  } catch (e) {
    throw new CniError(CniCode.NOT_AVAILABLE, `cannot read the address pools of the membrane agent`, (e as Error).message);
  }
  const pool = pools.find((p) => p.name === name);
  if (!pool)
    throw new CniError(
      CniCode.NOT_AVAILABLE,
      `the membrane agent has no network "${name}"`,
      `networks: ${pools.map((p) => p.name).join(', ') || 'none'}`,
    );
  const full = pool.subnets.filter((s) => BigInt(s.size) - BigInt(s.allocated) <= 0n);
  if (full.length) {
    throw new CniError(
      CniCode.NOT_AVAILABLE,
      `address pool of network "${name}" is exhausted`,
      full.map((s) => `${s.cidr}: ${s.allocated} of ${s.size} allocated`).join('; '),
    );
  }
}

/** A delegate that speaks 1.1.0 gets STATUS; an older one (Debian's host-local speaks <= 1.0.0) cannot. */
function delegateStatus(inv: Invocation, type: string): void {
  const versions = delegateVersions(inv.exec, type, inv.env.path);
  if (!versions.some((v) => cmpVersion(v, '1.1.0') >= 0)) {
    inv.log.debug('ipam plugin predates STATUS; not asked', { type, versions });
    return;
  }
  inv.exec({ type, verb: 'STATUS', stdin: inv.stdin, cniPath: inv.env.path });
}
