// DEL: never wedges. Agent reachable -> it deletes (unknown endpoint and gone netns are success);
// agent unreachable or silent -> the deletion is queued durably next to the agent's socket, for the
// agent to drain (at start, and periodically while it runs).
// A delegated IPAM plugin gets its DEL after both outcomes; only when the agent refused the delete
// (an error answer) the address stays held, so it cannot go to a new pod while the old veth lives.
import { AgentUnreachableError, DEFAULT_SOCKET } from '../../../shared/src/api/client.ts';
import { pendingDeletesDir, queuePendingDelete } from '../../../shared/src/pending-deletes/index.ts';
import { DEFAULT_DEL_TIMEOUT_MS, ipamType, type Invocation } from '../context.ts';
import { CniCode, CniError, fromAgentError } from '../errors.ts';

export async function cmdDel(inv: Invocation): Promise<string> {
  await deleteOrQueue(inv);
  const type = ipamType(inv);
  if (type) inv.exec({ type, verb: 'DEL', stdin: inv.stdin, cniPath: inv.env.path });
  return '';
}

async function deleteOrQueue(inv: Invocation): Promise<void> {
  const { containerId, ifName, netns } = inv.env;
  try {
    const { deleted } = await inv.agent(inv.conf.delTimeoutMs ?? DEFAULT_DEL_TIMEOUT_MS).deleteEndpoint(containerId, ifName);
    inv.log.info(deleted ? 'endpoint deleted' : 'endpoint already gone');
  } catch (e) {
    if (!(e instanceof AgentUnreachableError)) throw fromAgentError(e, `DEL ${containerId}/${ifName}`);
    const dir = pendingDeletesDir(inv.conf.agentSocket ?? DEFAULT_SOCKET);
    try {
      const file = queuePendingDelete(dir, {
        containerId,
        ifName,
        netns,
        cniNetwork: inv.conf.name,
        reason: e.reason,
        ...(inv.conf.network ? { network: inv.conf.network } : {}),
      });
      inv.log.warn('agent unreachable: deletion queued for the agent to finish', { file, reason: e.reason });
    } catch (qe) {
      throw new CniError(
        CniCode.IO,
        `DEL ${containerId}/${ifName}: agent unreachable and the deletion cannot be queued in ${dir}`,
        `${e.message}; queue: ${(qe as Error).message}`,
      );
    }
  }
}
