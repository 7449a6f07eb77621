// Running a delegated plugin (IPAM) the way libcni's invoke package does: found in CNI_PATH, the same
// stdin bytes, our environment with CNI_COMMAND (and for GC clean-ups, the attachment) overridden, its
// stderr forwarded to ours, its stdout parsed as a Result or an Error.
import fs from 'node:fs';
import path from 'node:path';
import { CniCode, CniError } from './errors.ts';
import { childProcess } from './lazy.ts';

export interface DelegateCall {
  type: string;
  verb: 'ADD' | 'DEL' | 'CHECK' | 'GC' | 'STATUS' | 'VERSION';
  stdin: Buffer | string;
  cniPath: string[];
  /** Extra / overriding environment (CNI_CONTAINERID etc. for per-attachment calls). */
  env?: Record<string, string>;
  timeoutMs?: number;
}

export type DelegateExec = (call: DelegateCall) => { stdout: string };

export function findPlugin(type: string, cniPath: string[]): string {
  if (!type || type.includes('/') || type.includes('\\')) {
    throw new CniError(
      CniCode.INVALID_CONFIG,
      `invalid plugin type ${JSON.stringify(type)}`,
      'a plugin type is a file name, without "/"',
    );
  }
  if (!cniPath.length) {
    throw new CniError(CniCode.INVALID_ENV, `CNI_PATH is empty: cannot find the ipam plugin "${type}"`);
  }
  for (const dir of cniPath) {
    const p = path.join(dir, type);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      /* next */
    }
  }
  throw new CniError(CniCode.INVALID_CONFIG, `failed to find plugin "${type}" in CNI_PATH`, `searched ${cniPath.join(':')}`);
}

/** Runs the delegate; success returns its stdout, failure throws its Error (code kept, msg prefixed). */
export const execDelegate: DelegateExec = (call) => {
  const bin = findPlugin(call.type, call.cniPath);
  const r = childProcess().spawnSync(bin, [], {
    input: call.stdin,
    env: { ...process.env, ...call.env, CNI_COMMAND: call.verb },
    stdio: ['pipe', 'pipe', 'inherit'],
    timeout: call.timeoutMs ?? 60_000,
    maxBuffer: 8 << 20,
  });
  const what = `${call.type} ${call.verb}`;
  if (r.error) throw new CniError(CniCode.DELEGATE_FAILED, `cannot run delegated plugin ${what}`, r.error.message);
  const stdout = r.stdout?.toString() ?? '';
  if (r.status === 0) return { stdout };
  let err: { code?: unknown; msg?: unknown; details?: unknown } | undefined;
  try {
    err = JSON.parse(stdout);
  } catch {
    /* not JSON */
  }
  if (err && typeof err.code === 'number') {
    const details = typeof err.details === 'string' && err.details ? err.details : undefined;
    throw new CniError(err.code, `delegated plugin ${what} failed: ${String(err.msg ?? '')}`, details);
  }
  const how = r.signal ? `killed by ${r.signal}` : `exit status ${r.status}`;
  throw new CniError(CniCode.DELEGATE_FAILED, `delegated plugin ${what} failed (${how})`, stdout.slice(0, 500) || undefined);
};

/** The versions a delegate speaks (its VERSION answer). A call that fails is made once more (one
 *  failed start of host-local under a loaded suite turned a GC into "speaks none of our versions"
 *  with the cause swallowed); a second failure is thrown, naming the plugin and the cause. */
export function delegateVersions(exec: DelegateExec, type: string, cniPath: string[]): string[] {
  let failure: unknown;
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const { stdout } = exec({
        type,
        verb: 'VERSION',
        stdin: '{"cniVersion":"1.1.0"}',
        cniPath,
        env: { CNI_NETNS: 'dummy', CNI_IFNAME: 'dummy' },
      });
      const v = JSON.parse(stdout) as { supportedVersions?: unknown };
      return Array.isArray(v.supportedVersions) ? v.supportedVersions.filter((x): x is string => typeof x === 'string') : [];
    } catch (e) {
      failure = e;
    }
  }
  const cause = failure instanceof CniError ? [failure.message, failure.details].filter(Boolean).join(': ') : String(failure);
  throw new CniError(
    failure instanceof CniError ? failure.code : CniCode.DELEGATE_FAILED,
    `cannot ask ipam plugin ${type} which versions it speaks`,
    cause,
  );
}

/** The same request configuration with another cniVersion (for delegates that do not speak ours). */
export function withVersion(stdin: Buffer | string, version: string): string {
  const o = JSON.parse(stdin.toString()) as Record<string, unknown>;
  return JSON.stringify({ ...o, cniVersion: version });
}
