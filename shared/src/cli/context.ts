// What every verb group gets from the root command: the agent client for the --socket given.
import type { Command } from 'commander';
import { AgentClient } from '../api/client.ts';

export interface CliContext {
  /** A client for the agent at --socket / MEMBRANE_SOCKET. */
  client(): AgentClient;
}

export function cliContext(program: Command): CliContext {
  return { client: () => new AgentClient({ socketPath: program.opts().socket, timeoutMs: 15_000 }) };
}

/** "12" -> 12 for id arguments; anything else is a usage error naming the argument. */
export function idArg(what: string): (v: string) => number {
  return (v) => {
    if (!/^\d+$/.test(v)) throw new Error(`${what} "${v}" is not a number`);
    return Number(v);
  };
}
