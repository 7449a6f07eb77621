// Runs the built membrane-cni executable exactly as libcni does: the parent's environment plus the
// CNI_* variables, the configuration on stdin, stdout parsed as Result or Error. Builds the SEA first
// when it is missing or older than its sources (one build even when test files run in parallel).
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const CNI_BIN = process.env.MEMBRANE_CNI_BIN ?? path.join(REPO, 'dist/bin/membrane-cni');

export interface Invoke {
  containerId?: string;
  netns?: string;
  ifName?: string;
  args?: string;
  path?: string;
  env?: Record<string, string | undefined>;
  bin?: string;
}

export interface Outcome {
  code: number | null;
  out: any;
  stdout: string;
  stderr: string;
  ms: number;
}

/** The environment a runtime would pass: ours, minus what the test runner injected for itself. */
export function runtimeEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  // tap's loader flags would make the SEA load tsx; a runtime would not carry them
  delete env.NODE_OPTIONS;
  delete env.NODE_EXTRA_CA_CERTS;
  for (const k of Object.keys(env)) if (k.startsWith('TAP') || k.startsWith('_TAPJS')) delete env[k];
  for (const [k, v] of Object.entries(extra)) if (v === undefined) delete env[k];
  return env;
}

export function invokeCni(verb: string, conf: unknown, o: Invoke = {}): Promise<Outcome> {
  const env = runtimeEnv({
    CNI_COMMAND: verb,
    CNI_CONTAINERID: o.containerId ?? '',
    CNI_NETNS: o.netns ?? '',
    CNI_IFNAME: o.ifName ?? 'eth0',
    CNI_ARGS: o.args ?? '',
    CNI_PATH: o.path ?? '/usr/lib/cni',
    ...o.env,
  });
  const stdin = typeof conf === 'string' ? conf : JSON.stringify(conf);
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(o.bin ?? CNI_BIN, [], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => {
      stdout += c;
    });
    child.stderr.on('data', (c) => {
      stderr += c;
    });
    child.on('error', reject);
    child.on('close', (code) => {
      let out: any;
      try {
        out = stdout ? JSON.parse(stdout) : undefined;
      } catch {
        out = stdout;
      }
      resolve({ code, out, stdout, stderr, ms: performance.now() - t0 });
    });
    child.stdin.on('error', () => undefined); // a plugin may exit without reading stdin
    child.stdin.end(stdin);
  });
}

/** Builds dist/bin/membrane-cni if missing or stale. Serialised across processes with a lock dir. */
export function ensureCniBinary(): string {
  if (process.env.MEMBRANE_CNI_BIN) return CNI_BIN;
  if (fresh()) return CNI_BIN;
  const lock = path.join(REPO, 'dist/.membrane-cni-build.lock');
  fs.mkdirSync(path.dirname(lock), { recursive: true });
  const deadline = Date.now() + 180_000;
  for (;;) {
    try {
      fs.mkdirSync(lock);
      break;
    } catch {
      /* someone else builds */
    }
    if (fresh()) return CNI_BIN;
    try {
      if (Date.now() - fs.statSync(lock).mtimeMs > 120_000) fs.rmdirSync(lock);
    } catch {
      /* gone */
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${lock}`);
    execFileSync('sleep', ['0.2']);
  }
  try {
    if (!fresh())
      execFileSync(process.execPath, [path.join(REPO, 'scripts/build-cni.mjs')], {
        stdio: ['ignore', 'ignore', 'inherit'],
        env: runtimeEnv(),
      });
  } finally {
    fs.rmdirSync(lock);
  }
  return CNI_BIN;
}

function fresh(): boolean {
  let built: number;
  try {
    built = fs.statSync(CNI_BIN).mtimeMs;
  } catch {
    return false;
  }
  const sources = [
    ...walk(path.join(REPO, 'cni/src')),
    ...walk(path.join(REPO, 'cni/build')),
    path.join(REPO, 'scripts/build-cni.mjs'),
    path.join(REPO, 'shared/src/api/client.ts'),
    path.join(REPO, 'shared/src/types.ts'),
  ];
  return sources.every((f) => fs.statSync(f).mtimeMs <= built);
}

function walk(dir: string): string[] {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)]));
}
