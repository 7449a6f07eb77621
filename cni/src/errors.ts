// The one error type every verb throws, and the translation of agent answers into CNI codes. The codes
// (the spec's 1-99, ours 100+) and the kind -> code table live in shared/src/errors.ts.
import { AgentApiError, AgentUnreachableError } from '../../shared/src/api/client.ts';
import { CniCode, kindInfo } from '../../shared/src/errors.ts';

export { CniCode };

export class CniError extends Error {
  constructor(
    readonly code: number,
    msg: string,
    readonly details?: string,
  ) {
    super(msg);
    this.name = 'CniError';
  }

  toJSON(cniVersion: string): { cniVersion: string; code: number; msg: string; details?: string } {
    return { cniVersion, code: this.code, msg: this.message, ...(this.details ? { details: this.details } : {}) };
  }
}

/** Turns whatever an agent call threw into a CniError naming the operation and its object. */
export function fromAgentError(e: unknown, operation: string): CniError {
  if (e instanceof CniError) return e;
  if (e instanceof AgentUnreachableError) {
    return new CniError(
      CniCode.TRY_AGAIN_LATER,
      `${operation}: membrane agent not reachable`,
      `${e.message}; the runtime should retry once the agent is up`,
    );
  }
  if (e instanceof AgentApiError) {
    return new CniError(kindInfo(e.code).cni, `${operation}: ${e.message}`, `agent answered HTTP ${e.status} ${e.code}`);
  }
  return internalError(e, operation);
}

export function internalError(e: unknown, operation: string): CniError {
  const err = e as Error;
  return new CniError(
    CniCode.INTERNAL,
    `${operation}: ${err?.message ?? String(e)}`,
    err?.stack?.split('\n').slice(0, 4).join(' | '),
  );
}
