// GC: delete every endpoint of this CNI network (metadata cni:network) that the runtime no longer lists
// in cni.dev/valid-attachments (fallback cni.dev/attachments), release its delegated IPAM addresses,
// then forward GC to the IPAM plugin if it speaks 1.1.0. Goes on past single failures, reports all.
import type { Endpoint } from '../../../shared/src/types.ts';
import { cmpVersion } from '../config.ts';
import { ipamType, type Invocation } from '../context.ts';
import { delegateVersions, withVersion } from '../delegate.ts';
import { CniCode, CniError, fromAgentError } from '../errors.ts';
import { K } from '../request.ts';

export async function cmdGc(inv: Invocation): Promise<string> {
  const valid = validAttachments(inv);
  const stale = (await ourEndpoints(inv)).filter((ep) => !valid.has(key(ep.containerId, ep.ifName)));
  const errors: string[] = [];
  for (const ep of stale) {
    try {
      await removeStale(inv, ep);
    } catch (e) {
      errors.push(`${ep.containerId}/${ep.ifName}: ${(e as Error).message}`);
    }
  }
  try {
    forwardGc(inv);
  } catch (e) {
    errors.push(`ipam GC: ${(e as Error).message}`);
  }
  inv.log.info('gc done', { valid: valid.size, removed: stale.length - errors.length, errors: errors.length });
  if (errors.length)
    throw new CniError(
      CniCode.TRY_AGAIN_LATER,
      `GC of network ${inv.conf.name}: ${errors.length} attachment(s) not cleaned`,
      errors.join('; '),
    );
  return '';
}

function validAttachments(inv: Invocation): Set<string> {
  const list = inv.conf['cni.dev/valid-attachments'] ?? inv.conf['cni.dev/attachments'];
  if (!list)
    throw new CniError(
      CniCode.INVALID_CONFIG,
      `GC of network ${inv.conf.name}: no cni.dev/valid-attachments in the configuration`,
    );
  return new Set(list.map((a) => key(a.containerID, a.ifname)));
}

async function ourEndpoints(inv: Invocation): Promise<Endpoint[]> {
  try {
    const all = await inv.agent().listEndpoints();
    return all.filter((ep) => ep.metadata?.[K.network] === inv.conf.name);
  } catch (e) {
    throw fromAgentError(e, `GC of network ${inv.conf.name}: listing endpoints`);
  }
}

async function removeStale(inv: Invocation, ep: Endpoint): Promise<void> {
  try {
    await inv.agent().deleteEndpoint(ep.containerId, ep.ifName);
  } catch (e) {
    throw fromAgentError(e, 'delete');
  }
  const type = ipamType(inv);
  if (type && ep.externalIpam) ipamDelFor(inv, type, ep);
  inv.log.info('gc removed stale endpoint', { containerId: ep.containerId, ifName: ep.ifName });
}

/** The IPAM plugin's DEL for one stale attachment, in a version it speaks (GC requests are 1.1.0). */
function ipamDelFor(inv: Invocation, type: string, ep: Endpoint): void {
  const versions = delegateVersions(inv.exec, type, inv.env.path);
  const speak = versions.includes(inv.version)
    ? inv.version
    : versions
        .filter((v) => cmpVersion(v, '0.4.0') >= 0)
        .sort(cmpVersion)
        .pop();
  if (!speak)
    throw new CniError(
      CniCode.INCOMPATIBLE_VERSION,
      `ipam plugin ${type} speaks none of our versions`,
      `it supports ${JSON.stringify(versions)}`,
    );
  inv.exec({
    type,
    verb: 'DEL',
    stdin: withVersion(inv.stdin, speak),
    cniPath: inv.env.path,
    env: { CNI_CONTAINERID: ep.containerId, CNI_IFNAME: ep.ifName, CNI_NETNS: '', CNI_ARGS: '' },
  });
}

function forwardGc(inv: Invocation): void {
  const type = ipamType(inv);
  if (!type) return;
  const versions = delegateVersions(inv.exec, type, inv.env.path);
  if (!versions.some((v) => cmpVersion(v, '1.1.0') >= 0)) {
    inv.log.debug('ipam plugin predates GC; stale addresses were released with DEL instead', { type, versions });
    return;
  }
  inv.exec({ type, verb: 'GC', stdin: inv.stdin, cniPath: inv.env.path });
}

function key(containerId: string, ifName: string): string {
  return `${containerId}\0${ifName}`;
}
