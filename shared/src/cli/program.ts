// The `membrane` command tree: the operator's view of a node agent, with cilium-dbg's and hubble's verbs.
// One file per verb group; a new group is a register function added to GROUPS.
import { Command } from 'commander';
import { AgentApiError, AgentUnreachableError, DEFAULT_SOCKET } from '../api/client.ts';
import { VERSION } from '../version.ts';
import { registerBpfCommands } from './bpf.ts';
import { registerClusterCommands } from './cluster.ts';
import { registerCompletionCommand } from './completion.ts';
import { cliContext, type CliContext } from './context.ts';
import { registerEndpointCommands } from './endpoint.ts';
import { registerIdentityCommands } from './identity.ts';
import { registerFqdnCommands } from './fqdn.ts';
import { registerNetworkCommands } from './network.ts';
import { registerObserveCommands } from './observe.ts';
import { registerPolicyCommands } from './policy.ts';
import { outputOption } from './output.ts';
import { registerStatusCommands } from './status.ts';

const GROUPS: ((program: Command, ctx: CliContext) => void)[] = [
  registerStatusCommands,
  registerEndpointCommands,
  registerIdentityCommands,
  registerNetworkCommands,
  registerPolicyCommands,
  registerBpfCommands,
  registerObserveCommands,
  (p, ctx) => registerClusterCommands(p, ctx.client, () => outputOption()),
  registerCompletionCommand,
  registerFqdnCommands,
];

export function buildProgram(): Command {
  const program = new Command('membrane')
    .description('Membrane: eBPF container networking and network security')
    .version(VERSION, '-V, --version', "the CLI's version (`membrane version` asks the agent too)")
    .option('--socket <path>', 'agent API socket (env MEMBRANE_SOCKET)', process.env.MEMBRANE_SOCKET ?? DEFAULT_SOCKET)
    // Global options go before the verb; verbs may then reuse option names (observe and its subcommands).
    .enablePositionalOptions()
    .showHelpAfterError();
  const ctx = cliContext(program);
  for (const register of GROUPS) register(program, ctx);
  return program;
}

export function explain(e: unknown): string {
  if (e instanceof AgentUnreachableError)
    return `membrane: ${e.message}\n  hint: start the agent, or point --socket / MEMBRANE_SOCKET at it\n`;
  if (e instanceof AgentApiError) return `membrane: ${e.message} (${e.code})\n`;
  return `membrane: ${(e as Error).message}\n`;
}
