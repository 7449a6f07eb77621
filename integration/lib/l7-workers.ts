// The agent's L7 proxy workers as a test waits for them: they start with the first L7 rule and each
// connects to the agent for the policy; a request diverted before that is not answered by the rules
// the test just imported.
import type { ChildProcess } from 'node:child_process';
import type { AgentClient } from '../../shared/src/api/client.ts';
import type { Cast } from './attack-pods.ts';
import { untilListening } from './tcp.ts';

export interface L7Status {
  /** The proxy's loopback port. */
  port: number;
  workers: { pid?: number; connected: boolean; restarts: number }[];
}

/** The agent's status of its L7 proxy. */
export async function l7Status(client: AgentClient): Promise<L7Status> {
  return (await client.status()).l7 as unknown as L7Status;
}

/** Polls until every proxy worker is connected (an agent still starting is waited for too); throws
 *  with the last status after `ms`. */
export async function l7WorkersConnected(client: AgentClient, ms = 60_000): Promise<L7Status> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const s = await l7Status(client);
      if (s.workers.every((w) => w.connected)) return s;
      last = s;
    } catch (e) {
      last = String(e); // the agent is starting
    }
    if (Date.now() > end) throw new Error(`L7 proxy workers did not connect: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The set-up of the L7 tests on a cast (lib/attack-pods.ts) with a `web` pod: `server` (a Node
 *  script that prints "listening") started in it and pushed onto `servers` (the caller kills them),
 *  `policy` imported, and the workers waited for. Resolves with the first worker's pid. */
export async function serveThroughL7(cast: Cast, server: string, policy: string, servers: ChildProcess[]): Promise<number> {
  const child = cast.pods.web.ns.spawn(process.execPath, ['-e', server]);
  servers.push(child);
  await untilListening(child, "the web pod's server", 60_000);
  await cast.pc.import(policy);
  return (await l7WorkersConnected(cast.agent.client)).workers[0].pid ?? 0;
}
