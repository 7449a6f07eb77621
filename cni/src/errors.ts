// CNI error codes (spec §"Error") and the one error type every verb throws. Codes 0-99 are the spec's;
// 100+ are ours and documented in the README.
import { AgentApiError, AgentUnreachableError } from '../../shared/src/api/client.ts';

export const Code = {
  INCOMPATIBLE_VERSION: 1,
  UNSUPPORTED_FIELD: 2,
  UNKNOWN_CONTAINER: 3,
  INVALID_ENV: 4,
  IO: 5,
  DECODE: 6,
  INVALID_CONFIG: 7,
  TRY_AGAIN_LATER: 11,
  NOT_AVAILABLE: 50,
  NOT_AVAILABLE_DEGRADED: 51,
  /** The agent answered with an internal error. */
  AGENT_INTERNAL: 100,
  /** A delegated plugin (IPAM) could not be run or answered something unreadable. */
  DELEGATE_FAILED: 101,
  /** CHECK found the attachment differs from prevResult or is not fully in place. */
  CHECK_FAILED: 102,
  /** A bug in membrane-cni itself. */
  INTERNAL: 999,
} as const;

export class CniError extends Error {
  constructor(readonly code: number, msg: string, readonly details?: string) {
    super(msg);
    this.name = 'CniError';
  }

  toJSON(cniVersion: string): { cniVersion: string; code: number; msg: string; details?: string } {
    return { cniVersion, code: this.code, msg: this.message, ...(this.details ? { details: this.details } : {}) };
  }
}

/** Agent API error codes -> CNI codes. `what` names the object the operation was about. */
const AGENT_CODE_MAP: Record<string, number> = {
  bad_request: Code.INVALID_CONFIG,
  netns_not_found: Code.INVALID_ENV,
  network_not_found: Code.INVALID_CONFIG,
  network_exists: Code.INVALID_CONFIG,
  network_in_use: Code.TRY_AGAIN_LATER,
  pool_exhausted: Code.TRY_AGAIN_LATER,
  address_in_use: Code.TRY_AGAIN_LATER,
  address_out_of_range: Code.INVALID_CONFIG,
  endpoint_exists: Code.INVALID_ENV,
  endpoint_not_found: Code.UNKNOWN_CONTAINER,
  not_found: Code.UNKNOWN_CONTAINER,
  internal: Code.AGENT_INTERNAL,
};

/** Turns whatever an agent call threw into a CniError naming the operation and its object. */
export function fromAgentError(e: unknown, operation: string): CniError {
  if (e instanceof CniError) return e;
  if (e instanceof AgentUnreachableError) {
    return new CniError(Code.TRY_AGAIN_LATER, `${operation}: membrane agent not reachable`,
      `${e.message}; the runtime should retry once the agent is up`);
  }
  if (e instanceof AgentApiError) {
    const code = AGENT_CODE_MAP[e.code] ?? Code.AGENT_INTERNAL;
    return new CniError(code, `${operation}: ${e.message}`, `agent answered HTTP ${e.status} ${e.code}`);
  }
  return internalError(e, operation);
}

export function internalError(e: unknown, operation: string): CniError {
  const err = e as Error;
  return new CniError(Code.INTERNAL, `${operation}: ${err?.message ?? String(e)}`, err?.stack?.split('\n').slice(0, 4).join(' | '));
}
