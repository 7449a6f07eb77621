// The plugin as a function: environment + stdin in, stdout text + exit code out. main.ts wires it to the
// process; tests call it directly.
import { isSupportedVersion, LATEST_VERSION, parseNetConf, requireVersionFor, SUPPORTED_VERSIONS } from './config.ts';
import { makeInvocation } from './context.ts';
import type { DelegateExec } from './delegate.ts';
import { readCommand, readEnv, type Verb } from './env.ts';
import { CniCode, CniError, internalError } from './errors.ts';
import { createLogger, type Logger } from './log.ts';
import { cmdAdd } from './verbs/add.ts';
import { cmdCheck } from './verbs/check.ts';
import { cmdDel } from './verbs/del.ts';
import { cmdGc } from './verbs/gc.ts';
import { cmdStatus } from './verbs/status.ts';
import type { Invocation } from './context.ts';

export interface RunInput {
  env: NodeJS.ProcessEnv;
  /** Reads all of stdin (not called for VERSION). */
  readStdin: () => Buffer;
  exec?: DelegateExec;
  stderr?: (line: string) => void;
}

export interface RunOutput {
  stdout: string;
  exitCode: number;
}

const VERBS: Record<Exclude<Verb, 'VERSION'>, (inv: Invocation) => Promise<string>> = {
  ADD: cmdAdd,
  DEL: cmdDel,
  CHECK: cmdCheck,
  STATUS: cmdStatus,
  GC: cmdGc,
};

export async function runCni(input: RunInput): Promise<RunOutput> {
  const mark = timing(input);
  let version = LATEST_VERSION;
  let log: Logger = createLogger({ stderr: input.stderr });
  try {
    const command = readCommand(input.env);
    if (command === 'VERSION') return { stdout: versionReply(input), exitCode: 0 };
    const env = readEnv(input.env, command);
    const stdin = readAll(input.readStdin);
    mark('stdin');
    const conf = parseNetConf(stdin);
    mark('config');
    version = conf.cniVersion!;
    requireVersionFor(command, version);
    log = createLogger({ file: conf.logFile, level: conf.logLevel, stderr: input.stderr });
    log.bind({ verb: command, network: conf.name, containerId: env.containerId || undefined, ifName: env.ifName || undefined });
    log.debug('invoked', { netns: env.netns, args: env.args, cniVersion: version });
    const stdout = await VERBS[command](makeInvocation(env, conf, stdin, log, input.exec));
    mark(command);
    log.debug('done');
    return { stdout, exitCode: 0 };
  } catch (e) {
    const err = e instanceof CniError ? e : internalError(e, String(input.env.CNI_COMMAND ?? 'plugin'));
    log.error(err.message, { code: err.code, details: err.details });
    return { stdout: JSON.stringify(err.toJSON(version)), exitCode: 1 };
  }
}

/** VERSION: stdin is optional and may be anything; answer with the caller's version when we speak it. */
function versionReply(input: RunInput): string {
  let asked: string | undefined;
  try {
    asked = (JSON.parse(input.readStdin().toString()) as { cniVersion?: string }).cniVersion;
  } catch {
    /* ignore */
  }
  return JSON.stringify({
    cniVersion: isSupportedVersion(asked) ? asked : LATEST_VERSION,
    supportedVersions: SUPPORTED_VERSIONS,
  });
}

/** MEMBRANE_CNI_TIMING=1: phase times since process start on stderr (start-up cost hunting). */
function timing(input: RunInput): (phase: string) => void {
  if (!input.env.MEMBRANE_CNI_TIMING) return () => undefined;
  const write = input.stderr ?? ((l: string) => process.stderr.write(l));
  write(`membrane-cni timing: main ${performance.now().toFixed(1)} ms\n`);
  return (phase) => write(`membrane-cni timing: ${phase} ${performance.now().toFixed(1)} ms\n`);
}

function readAll(read: () => Buffer): Buffer {
  try {
    return read();
  } catch (e) {
    throw new CniError(CniCode.IO, 'cannot read the network configuration from stdin', (e as Error).message);
  }
}
