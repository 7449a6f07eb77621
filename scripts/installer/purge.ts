// What the agent leaves on a node after it stopped (it keeps the datapath forwarding on purpose): its
// endpoints, host device, pinned maps and programs, sockets and state, and in cluster mode its routing
// (shared/src/routing/teardown.ts). Found through the agent's own
// configuration resolution (the unit's config file and environment file), so purge removes what the
// installed agent used and nothing else.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { AgentClient } from '../../shared/src/api/client.ts';
import { resolveConfig, type AgentConfig } from '../../shared/src/agent/config.ts';
import type { Layout } from './layout.ts';
import { pendingDeletesDir } from '../../shared/src/pending-deletes/index.ts';
import { openNetlink } from '../../shared/src/netlink/index.ts';
import { removeClusterRouting } from '../../shared/src/routing/teardown.ts';

/** KEY=VALUE lines (systemd EnvironmentFile syntax, the simple part of it). */
export function parseEnvFile(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m || line.startsWith('#')) continue;
    env[m[1]] = m[2].replace(/^"(.*)"$/, '$1').replace(/^'(.*)'$/, '$1');
  }
  return env;
}

/** The installed agent's configuration, as `membrane-agent --config FILE` under the unit would see it. */
export function installedAgentConfig(l: Layout): AgentConfig {
  const env = fs.existsSync(l.envFile) ? parseEnvFile(fs.readFileSync(l.envFile, 'utf8')) : {};
  const argv = fs.existsSync(l.configFile) ? ['--config', l.configFile] : [];
  return resolveConfig(argv, env, (p) => fs.readFileSync(p, 'utf8'));
}

function pidAlive(file: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').trim());
    if (pid > 0) {
      process.kill(pid, 0);
      return pid;
    }
  } catch {
    /* no pid file, or not running */
  }
  return undefined;
}

export interface PurgeReport {
  endpointsDeleted: number;
  removed: string[];
}

/** With the agent answering: delete its endpoints through it (that frees what each holds). */
export async function deleteEndpoints(cfg: AgentConfig): Promise<number> {
  if (!fs.existsSync(cfg.socket)) return 0;
  const client = new AgentClient({ socketPath: cfg.socket, timeoutMs: 30_000 });
  let eps;
  try {
    eps = await client.listEndpoints();
  } catch {
    return 0;
  }
  for (const ep of eps) await client.deleteEndpoint(ep.containerId, ep.ifName);
  return eps.length;
}

/** Everything the stopped agent left; refuses while it still runs. */
export function purgeAgentState(cfg: AgentConfig, l: Layout): string[] {
  const pid = pidAlive(path.join(cfg.stateDir, 'agent.pid'));
  if (pid)
    throw new Error(
      `membrane-agent (pid ${pid}) still runs on ${cfg.stateDir}: stop it, then run --uninstall --purge again (its endpoints are deleted already)`,
    );
  const removed: string[] = [];
  // L7 proxy workers outlive the agent by design; they are the agent's children, named in its state.
  for (const f of listFiles(path.join(cfg.stateDir, 'l7')).filter((f) => f.endsWith('.pid'))) {
    const worker = pidAlive(f);
    if (worker && cmdline(worker).includes('membrane-proxy')) {
      process.kill(worker, 'SIGTERM');
      removed.push(`proxy worker ${worker}`);
    }
  }
  // Cluster mode: routes, tunnel device and native routing's underlay program, before the pins that
  // identify the program go.
  if (cfg.cluster) removed.push(...clusterRoutingLeftovers(cfg));
  try {
    execFileSync('ip', ['link', 'del', cfg.hostDevice], { stdio: 'ignore' });
    removed.push(`link ${cfg.hostDevice}`);
  } catch {
    /* not there */
  }
  for (const p of [
    cfg.bpffsDir,
    cfg.stateDir,
    cfg.socket,
    pendingDeletesDir(cfg.socket),
    cfg.observerSocket,
    ...(cfg.dockerPlugin ? [path.join(cfg.dockerPluginDir, `${cfg.dockerPlugin}.sock`)] : []),
    path.join(l.root || '/', 'var/log/membrane'),
  ]) {
    if (!fs.existsSync(p)) continue;
    fs.rmSync(p, { recursive: true, force: true });
    removed.push(p);
  }
  for (const dir of new Set([path.dirname(cfg.socket), path.dirname(cfg.observerSocket)])) {
    try {
      fs.rmdirSync(dir);
      removed.push(dir);
    } catch {
      /* not empty or gone */
    }
  }
  return removed;
}

function clusterRoutingLeftovers(cfg: AgentConfig): string[] {
  const host = openNetlink();
  try {
    return removeClusterRouting(host, {
      pinDir: cfg.bpffsDir,
      tunnelDevice: cfg.cluster!.tunnelDevice,
      nodeIp: cfg.cluster!.nodeIp,
    });
  } finally {
    host.close();
  }
}

function listFiles(dir: string): string[] {
  try {
    return fs.readdirSync(dir).map((n) => path.join(dir, n));
  } catch {
    return [];
  }
}

function cmdline(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  } catch {
    return '';
  }
}
