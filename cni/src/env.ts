// The CNI_* environment: which variables each verb needs, their syntax (libcni's rules), CNI_ARGS.
import { CniCode, CniError } from './errors.ts';
import { ifNameProblem } from '../../shared/src/net/index.ts';

export const VERBS = ['ADD', 'DEL', 'CHECK', 'STATUS', 'GC', 'VERSION'] as const;
export type Verb = (typeof VERBS)[number];

export interface CniEnv {
  command: Verb;
  containerId: string;
  /** '' when the runtime sent none (DEL after the sandbox is gone). */
  netns: string;
  ifName: string;
  /** Parsed CNI_ARGS, keys as sent. */
  args: Record<string, string>;
  /** CNI_PATH split on ':'; may be empty. */
  path: string[];
}

const CONTAINER_ID_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

/** Which variables must be non-empty, per verb (the spec's table; DEL tolerates an empty CNI_NETNS). */
const REQUIRED: Record<Verb, ('CNI_CONTAINERID' | 'CNI_NETNS' | 'CNI_IFNAME')[]> = {
  ADD: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME'],
  CHECK: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME'],
  DEL: ['CNI_CONTAINERID', 'CNI_IFNAME'],
  STATUS: [],
  GC: [],
  VERSION: [],
};

export function readCommand(env: NodeJS.ProcessEnv): Verb {
  const cmd = env.CNI_COMMAND;
  if (!cmd)
    throw new CniError(
      CniCode.INVALID_ENV,
      'required environment variable CNI_COMMAND is missing',
      `expected one of ${VERBS.join(', ')}`,
    );
  if (!(VERBS as readonly string[]).includes(cmd))
    throw new CniError(CniCode.INVALID_ENV, `unknown CNI_COMMAND: ${cmd}`, `expected one of ${VERBS.join(', ')}`);
  return cmd as Verb;
}

/** Reads and validates the environment for `command`. Throws CniError 4 naming every bad variable. */
export function readEnv(env: NodeJS.ProcessEnv, command: Verb): CniEnv {
  const missing = REQUIRED[command].filter((k) => !env[k]);
  if (missing.length) {
    throw new CniError(
      CniCode.INVALID_ENV,
      `required environment variables missing for ${command}: ${missing.join(', ')}`,
      `CNI_CONTAINERID=${q(env.CNI_CONTAINERID)} CNI_NETNS=${q(env.CNI_NETNS)} CNI_IFNAME=${q(env.CNI_IFNAME)}`,
    );
  }
  const out: CniEnv = {
    command,
    containerId: env.CNI_CONTAINERID ?? '',
    netns: env.CNI_NETNS ?? '',
    ifName: env.CNI_IFNAME ?? '',
    args: {},
    path: (env.CNI_PATH ?? '').split(':').filter(Boolean),
  };
  if (REQUIRED[command].length) {
    if (!CONTAINER_ID_RE.test(out.containerId)) {
      throw new CniError(
        CniCode.INVALID_ENV,
        `invalid CNI_CONTAINERID ${q(out.containerId)}`,
        'must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$',
      );
    }
    const ifProblem = ifNameProblem(out.ifName);
    if (ifProblem) throw new CniError(CniCode.INVALID_ENV, `invalid CNI_IFNAME ${q(out.ifName)}`, ifProblem);
    out.args = parseCniArgs(env.CNI_ARGS ?? '');
  }
  return out;
}

/** "K1=V1;K2=V2" -> {K1: V1, K2: V2}. Splits each pair on its first '='; skips empty and malformed
 *  pairs (the order of pairs is not stable across calls, containerd builds them from a map). */
export function parseCniArgs(s: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of s.split(';')) {
    const eq = pair.indexOf('=');
    if (eq <= 0) continue;
    out[pair.slice(0, eq).trim()] = pair.slice(eq + 1).trim();
  }
  return out;
}

function q(v: string | undefined): string {
  return v === undefined ? '(unset)' : JSON.stringify(v);
}
