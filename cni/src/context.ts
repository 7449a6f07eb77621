// One plugin invocation: validated environment + configuration, logger, agent client, delegate runner.
import { DEFAULT_SOCKET, type AgentClient } from '../../shared/src/api/client.ts';
import { CniAgentClient } from './transport.ts';
import type { NetConf } from './config.ts';
import { execDelegate, type DelegateExec } from './delegate.ts';
import type { CniEnv } from './env.ts';
import type { Logger } from './log.ts';
import { CniCode, CniError } from './errors.ts';

export const DEFAULT_ADD_TIMEOUT_MS = 30_000;
export const DEFAULT_DEL_TIMEOUT_MS = 10_000;

export interface Invocation {
  env: CniEnv;
  conf: NetConf;
  /** The exact stdin bytes (delegated plugins get the same). */
  stdin: Buffer;
  version: string;
  log: Logger;
  exec: DelegateExec;
  agent(timeoutMs?: number): AgentClient;
}

export function makeInvocation(
  env: CniEnv,
  conf: NetConf,
  stdin: Buffer,
  log: Logger,
  exec: DelegateExec = execDelegate,
): Invocation {
  const socketPath = conf.agentSocket ?? DEFAULT_SOCKET;
  return {
    env,
    conf,
    stdin,
    log,
    exec,
    version: conf.cniVersion!,
    agent: (timeoutMs = conf.addTimeoutMs ?? DEFAULT_ADD_TIMEOUT_MS) => new CniAgentClient({ socketPath, timeoutMs }),
  };
}

/** The delegated IPAM plugin type, or undefined for the agent's IPAM. */
export function ipamType(inv: Invocation): string | undefined {
  const t = inv.conf.ipam?.type;
  return typeof t === 'string' && t ? t : undefined;
}

/** prevResult is required (CHECK): a clear error when the runtime did not send one. */
export function requirePrevResult(inv: Invocation): Record<string, unknown> {
  const prev = inv.conf.prevResult;
  if (!prev)
    throw new CniError(
      CniCode.INVALID_CONFIG,
      `${inv.env.command} of ${inv.env.containerId}/${inv.env.ifName}: no prevResult in the configuration`,
    );
  return prev;
}
