// Calls the plugin in-process (runCni) with a libcni-like environment, for unit tests.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runCni } from '../../src/run.ts';
import type { DelegateExec } from '../../src/delegate.ts';

export interface Call {
  containerId?: string;
  netns?: string;
  ifName?: string;
  args?: string;
  path?: string;
  exec?: DelegateExec;
  env?: Record<string, string | undefined>;
}

export async function cniCall(
  verb: string,
  conf: unknown,
  c: Call = {},
): Promise<{ code: number; out: any; stdout: string; stderr: string }> {
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    CNI_COMMAND: verb,
    CNI_CONTAINERID: c.containerId ?? 'cid1',
    CNI_NETNS: c.netns ?? '',
    CNI_IFNAME: c.ifName ?? 'eth0',
    CNI_ARGS: c.args ?? '',
    CNI_PATH: c.path ?? '/usr/lib/cni',
    ...c.env,
  };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k];
  let stderr = '';
  const stdin = typeof conf === 'string' ? conf : JSON.stringify(conf);
  const r = await runCni({
    env,
    readStdin: () => Buffer.from(stdin),
    exec: c.exec,
    stderr: (l) => {
      stderr += l;
    },
  });
  let out: any;
  try {
    out = r.stdout ? JSON.parse(r.stdout) : undefined;
  } catch {
    out = r.stdout;
  }
  return { code: r.exitCode, out, stdout: r.stdout, stderr };
}

/** A file standing in for a netns path (the plugin only checks that it can be opened). */
export function fakeNetns(): { path: string; remove(): void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-netns-'));
  const p = path.join(dir, 'ns');
  fs.writeFileSync(p, '');
  return { path: p, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

export function tmpDir(prefix = 'mbr-cni-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}
