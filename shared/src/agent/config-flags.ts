// The agent's command line: commander parses the flags and writes --help, both from OPTIONS
// (config-options.ts), so a flag and its help never disagree.
import { Command, CommanderError, Option } from 'commander';
import { OPTIONS, type Key, type OptionSpec } from './config-options.ts';
import { ConfigError } from './config-values.ts';

function describe(o: OptionSpec): string {
  const extras = [o.default !== undefined ? `default ${o.default}` : '', o.env ? `env ${o.env}` : ''].filter(Boolean);
  return extras.length ? `${o.help} (${extras.join('; ')})` : o.help;
}

/** A fresh commander program over OPTIONS (commander keeps parse state, so one per parse). */
function program(): { cmd: Command; attr: Map<Key, string> } {
  const cmd = new Command('membrane-agent')
    .description("Membrane node agent: owns the node's networking state, programs the eBPF datapath, serves the API")
    .helpOption('-h, --help', 'show this help')
    .allowExcessArguments(false)
    .exitOverride()
    .configureOutput({ writeOut: () => undefined, writeErr: () => undefined })
    .addHelpText('after', '\nPrecedence: flags, then environment variables, then the --config file, then the defaults.');
  const attr = new Map<Key, string>();
  for (const o of OPTIONS) {
    const opt = new Option(o.flags, describe(o));
    if (o.key === 'pools') opt.argParser((v: string, prev: string[] = []) => [...prev, v]);
    cmd.addOption(opt);
    attr.set(o.key, opt.attributeName());
  }
  return { cmd, attr };
}

/** The generated --help text. */
export function helpText(): string {
  return program().cmd.helpInformation();
}

export type Flags = Partial<Record<Exclude<Key, 'pools' | 'policyAuditMode'>, string>> & {
  pools: string[];
  policyAuditMode?: boolean;
  help?: boolean;
};

export function parseFlags(argv: string[]): Flags {
  const { cmd, attr } = program();
  try {
    cmd.parse(argv, { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed') return { pools: [], help: true };
      throw new ConfigError(`${e.message.replace(/^error: /, '')} (see membrane-agent --help)`);
    }
    throw e;
  }
  const raw = cmd.opts() as Record<string, unknown>;
  const flags: Flags = { pools: (raw[attr.get('pools')!] as string[] | undefined) ?? [] };
  for (const o of OPTIONS) {
    const v = raw[attr.get(o.key)!];
    if (v === undefined || o.key === 'pools') continue;
    if (o.key === 'policyAuditMode') flags.policyAuditMode = v === true;
    else if (o.key === 'dockerPlugin') flags.dockerPlugin = v === true ? 'membrane' : String(v);
    else flags[o.key] = String(v);
  }
  return flags;
}
