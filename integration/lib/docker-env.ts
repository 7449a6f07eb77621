// One Docker test setup: a private dockerd (shared by a test file), and per test a fresh agent serving
// the Docker plugin under a fresh name (dockerd caches a plugin's activation per name for its lifetime).
// Everything a test creates through it (containers, networks) is removed at teardown even when the
// test failed, then the agent, its plugin socket and (at file end) dockerd and its directories.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { startAgent, randomId, sleep, type TestAgent } from './agent.ts';
import { startDockerd, type Dockerd } from './dockerd.ts';
import { ensureBusyboxImage } from './bbimage.ts';
import { pollUntil } from '../../shared/test/lib/poll.ts';
import { claimSubnet } from './subnets.ts';

export const PLUGIN_DIR = '/run/docker/plugins';

/** A random 10.2xx.y.0/24 for Docker networks (clear of the agent's 10.64-191 test pools and 10.200/16),
 *  claimed for this process: a test file running at the same time never gets the same one. */
export function dockerSubnet(): { cidr: string; prefix: string; gateway: string } {
  const prefix = claimSubnet(() => {
    const b = crypto.randomBytes(2);
    return `10.${210 + (b[0] % 40)}.${b[1]}`;
  });
  return { cidr: `${prefix}.0/24`, prefix, gateway: `${prefix}.1` };
}

export function dockerSubnet6(): { cidr: string; prefix: string; gateway: string } {
  const [x, y] = [crypto.randomBytes(2).readUInt16BE(), crypto.randomBytes(2).readUInt16BE()];
  // No leading zeros, so the prefix reads as docker prints addresses.
  const prefix = `fd00:${x.toString(16)}:${y.toString(16)}:1`;
  return { cidr: `${prefix}::/64`, prefix, gateway: `${prefix}::1` };
}

export interface PluginAgent {
  agent: TestAgent;
  plugin: string;
  socketPath: string;
}

export interface PluginAgentOptions {
  /** The agent finds the Docker API through DOCKER_HOST (this value) instead of --docker-socket. */
  dockerHost?: string;
  /** More agent flags. */
  agentArgs?: string[];
}

/** Agent hosting the Docker plugin NAME (fresh name unless `reuse`). */
export async function startPluginAgent(
  d: Dockerd,
  opts: { reuse?: PluginAgent } & PluginAgentOptions = {},
): Promise<PluginAgent> {
  const plugin = opts.reuse?.plugin ?? `mbt${randomId(4)}`;
  const agent = await startAgent({
    reuse: opts.reuse?.agent,
    extraArgs: [
      '--docker-plugin',
      plugin,
      '--docker-plugin-dir',
      PLUGIN_DIR,
      ...(opts.dockerHost ? [] : ['--docker-socket', d.socket]),
      ...(opts.agentArgs ?? []),
    ],
    ...(opts.dockerHost ? { env: { DOCKER_HOST: opts.dockerHost } } : {}),
  });
  return { agent, plugin, socketPath: path.join(PLUGIN_DIR, `${plugin}.sock`) };
}

export class DockerTestEnv {
  readonly containers = new Set<string>();
  readonly networks = new Set<string>();
  private constructor(
    readonly d: Dockerd,
    readonly pa: PluginAgent,
    readonly image: string,
  ) {}

  static async start(d: Dockerd, opts: PluginAgentOptions = {}): Promise<DockerTestEnv> {
    const image = await ensureBusyboxImage(d);
    const pa = await startPluginAgent(d, opts);
    return new DockerTestEnv(d, pa, image);
  }

  get agent(): TestAgent {
    return this.pa.agent;
  }
  get plugin(): string {
    return this.pa.plugin;
  }

  docker(args: string[], timeoutMs?: number): Promise<string> {
    return this.d.docker(args, { timeoutMs });
  }
  dockerTry(args: string[], timeoutMs?: number) {
    return this.d.dockerTry(args, { timeoutMs });
  }

  /** docker network create -d <plugin> …; returns the network name. */
  async network(args: string[], name = `n${randomId(3)}`): Promise<string> {
    this.networks.add(name);
    await this.docker(['network', 'create', '-d', this.plugin, ...args, name]);
    return name;
  }

  /** docker run -d …; `args` go before the image, `cmd` after it. Returns the container name. */
  async run(args: string[], cmd: string[] = ['sleep', '3600'], name = `c${randomId(3)}`): Promise<string> {
    this.containers.add(name);
    await this.docker(['run', '-d', '--name', name, ...args, this.image, ...cmd]);
    return name;
  }

  async exec(container: string, cmd: string[], timeoutMs = 30_000) {
    return this.dockerTry(['exec', container, ...cmd], timeoutMs);
  }

  async ping(container: string, ip: string, count = 1): Promise<boolean> {
    const r = await this.exec(container, ['ping', '-c', String(count), '-W', '2', ip]);
    return r.code === 0;
  }

  /** Retries until the ping works (a just-started container) or the time is up. */
  async pingEventually(container: string, ip: string, ms = 30_000): Promise<boolean> {
    const end = Date.now() + ms;
    do {
      if (await this.ping(container, ip)) return true;
      await sleep(100);
    } while (Date.now() < end);
    return false;
  }

  /** IPv4/IPv6/MAC of a container on a network, from docker inspect. */
  async addressOf(container: string, network: string): Promise<{ ip: string; ip6: string; mac: string; endpointId: string }> {
    const f = `{{with index .NetworkSettings.Networks "${network}"}}{{.IPAddress}} {{.GlobalIPv6Address}} {{.MacAddress}} {{.EndpointID}}{{end}}`;
    const [ip, ip6, mac, endpointId] = (await this.docker(['inspect', '-f', f, container])).trim().split(' ');
    return { ip, ip6, mac, endpointId };
  }

  /** Removes what this env created, the plugin agent and its socket. Never throws. */
  async cleanup(): Promise<void> {
    if (this.containers.size) await this.dockerTry(['rm', '-f', '-v', ...this.containers], 120_000);
    for (const n of this.networks) await this.dockerTry(['network', 'rm', n]);
    const gw = await this.dockerTry(['network', 'inspect', 'docker_gwbridge']);
    if (gw.code === 0) await this.dockerTry(['network', 'rm', 'docker_gwbridge']);
    await this.agent.cleanup().catch(() => undefined);
    fs.rmSync(this.pa.socketPath, { force: true });
  }
}

/**
 * The Docker fixture of a test file: one private dockerd, started before the file's first test and
 * destroyed after its last, and `env(t)`: a fresh DockerTestEnv cleaned up when test `t` ends (on the
 * file's dockerd, or on `d`).
 */
export function dockerFixture(file: Test): {
  dockerd(): Dockerd;
  env(t: Test, d?: Dockerd, opts?: PluginAgentOptions): Promise<DockerTestEnv>;
} {
  let shared: Dockerd | undefined;
  file.before(async () => {
    shared = await startDockerd();
  });
  file.teardown(async () => {
    await shared?.destroy();
  });
  return {
    dockerd: () => shared!,
    async env(t, d = shared!, opts = {}) {
      const e = await DockerTestEnv.start(d, opts);
      t.teardown(() => e.cleanup());
      return e;
    },
  };
}

/** Polls until `cond` holds or the time is up (every 100 ms: each look asks dockerd); whether it held.
 *  The default deadline is generous: a loaded 2-vCPU CI machine can take seconds per docker call. */
export const eventually = (cond: () => boolean | Promise<boolean>, ms = 30_000, stepMs = 100): Promise<boolean> =>
  pollUntil(cond, ms, stepMs);

export { startDockerd, randomId, sleep };
