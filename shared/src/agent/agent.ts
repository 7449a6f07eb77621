// The node agent: owns all node state (store, IPAM, networks, endpoints, datapath) and serves it.
import fs from 'node:fs';
import path from 'node:path';
import type http from 'node:http';
import type { AgentServices, Core, IpamService, NetworkService } from '../core.ts';
import type { AgentStatus, NetworkSpec } from '../types.ts';
import type { Logger } from '../log.ts';
import type { AgentConfig } from './config.ts';
import type { Store } from '../store/index.ts';
import { JournalStore } from '../store/journal.ts';
import { Ipam } from '../ipam/index.ts';
import { Networks, NetworkError } from '../network/index.ts';
import { EndpointManager } from '../endpoint/manager.ts';
import { enableForwarding, ensureGateways, ensureHostDevice, removeGateways } from '../endpoint/host-device.ts';
import { openNetlink, type Netlink } from '../netlink/index.ts';
import { warmThreadPool } from '../netns/index.ts';
import { loadDatapath, type Datapath } from '../bpf/datapath.ts';
import { createApp, serveApi } from '../api/server.ts';
import { VERSION } from '../version.ts';
import { acquirePidLock, type PidLock } from './pidlock.ts';
import { resolveBpfObject } from './paths.ts';

export interface AgentExtension {
  name: string;
  /** Before endpoints are restored: register endpoint hooks, services and API routers. */
  init?(agent: Agent): Promise<void> | void;
  /** After restore, before the API serves. */
  start?(agent: Agent): Promise<{ close(): Promise<void> } | void>;
}

export class Agent {
  readonly startedAt = Date.now();
  /** Filled by extensions for each other (policy registers lookups, flows reads them). */
  readonly services: AgentServices = {};
  /** Extra fields for /v1/status, keyed by extension (e.g. metrics address, observer socket). */
  readonly statusExtras: Record<string, unknown> = {};
  /** API routers added by extensions, mounted at their path (e.g. /v1/policy). */
  readonly routers: { path: string; router: import('express').Router }[] = [];
  private server?: http.Server;
  private closers: { name: string; close(): Promise<void> }[] = [];

  private constructor(
    readonly cfg: AgentConfig,
    readonly log: Logger,
    readonly core: Core,
    readonly endpoints: EndpointManager,
    private readonly host: Netlink,
    readonly datapath: Datapath,
    private readonly pidLock: PidLock,
    readonly store: Store,
  ) {}

  static async start(cfg: AgentConfig, log: Logger, extensions: AgentExtension[] = []): Promise<Agent> {
    fs.mkdirSync(cfg.stateDir, { recursive: true, mode: 0o700 });
    const pidLock = acquirePidLock(path.join(cfg.stateDir, 'agent.pid'));
    try {
      // Worker threads inherit the netns of the thread that starts them: start them while we are home.
      await warmThreadPool();
      const store = new JournalStore(path.join(cfg.stateDir, 'store'));
      const ipam = await Ipam.open(store);
      const networks = await Networks.open(store, ipam);
      for (const spec of cfg.networks) await ensureConfiguredNetwork(networks, spec);

      const host = openNetlink();
      ensureHostDevice(host, cfg.hostDevice);
      for (const n of networks.list()) ensureGateways(host, cfg.hostDevice, n);
      enableForwarding(networks.list().some((n) => n.subnets.some((s) => s.family === 6)));

      const datapath = loadDatapath({ objectPath: resolveBpfObject(cfg.bpfObject), pinDir: cfg.bpffsDir });
      const endpoints = new EndpointManager({ store, ipam, networks, datapath, host, log });
      const core: Core = {
        networks: networkService(networks, endpoints, host, cfg.hostDevice),
        endpoints,
        ipam: ipamService(ipam),
      };
      const agent = new Agent(cfg, log, core, endpoints, host, datapath, pidLock, store);
      try {
        for (const ext of extensions) await ext.init?.(agent);
        const restored = await endpoints.restore();
        log.info(restored, 'endpoints restored');
        for (const ext of extensions) {
          const handle = await ext.start?.(agent);
          if (handle) agent.closers.push({ name: ext.name, close: handle.close });
        }
      } catch (e) {
        await agent.closeExtensions();
        throw e;
      }
      const app = createApp({
        core, log, version: VERSION, status: () => agent.status(),
        check: (cid, ifName) => endpoints.check(cid, ifName),
        routers: agent.routers,
      });
      agent.server = await serveApi(app, cfg.socket);
      log.info({ socket: cfg.socket, stateDir: cfg.stateDir, bpffsDir: cfg.bpffsDir, networks: networks.list().map((n) => n.name) }, 'membrane agent ready');
      return agent;
    } catch (e) {
      pidLock.release();
      throw e;
    }
  }

  async closeExtensions(): Promise<void> {
    for (const c of this.closers.reverse()) {
      try { await c.close(); } catch (err) { this.log.warn({ err, extension: c.name }, 'extension did not close cleanly'); }
    }
    this.closers = [];
  }

  status(): AgentStatus {
    return {
      version: VERSION,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      endpoints: this.endpoints.list().length,
      networks: this.core.networks.list().length,
      stateDir: this.cfg.stateDir,
      socket: this.cfg.socket,
      datapath: { pinDir: this.datapath.pinDir, attach: 'tc-clsact', hostDevice: this.cfg.hostDevice },
      nodeName: this.cfg.nodeName,
      ...this.statusExtras,
    };
  }

  /** Stops serving. The datapath (links, routes, attached programs, pinned maps) keeps forwarding. */
  async stop(): Promise<void> {
    if (this.server) {
      const server = this.server;
      this.server = undefined;
      await new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections?.();
      fs.rmSync(this.cfg.socket, { force: true });
    }
    await this.closeExtensions();
    this.datapath.close();
    this.host.close();
    (this.store as JournalStore).close();
    this.pidLock.release();
  }
}

async function ensureConfiguredNetwork(networks: Networks, spec: NetworkSpec): Promise<void> {
  try {
    await networks.create(spec);
  } catch (e) {
    if (e instanceof NetworkError && e.code === 'network_exists') {
      throw new Error(`${e.message}; the state dir keeps it: give --pool the same subnets, or use another --state-dir`);
    }
    throw e;
  }
}

function networkService(networks: Networks, endpoints: EndpointManager, host: Netlink, hostDevice: string): NetworkService {
  return {
    get: (name) => networks.get(name),
    list: () => networks.list(),
    async create(spec) {
      const n = await networks.create(spec);
      ensureGateways(host, hostDevice, n);
      if (n.subnets.some((s) => s.family === 6)) enableForwarding(true);
      return n;
    },
    async delete(name) {
      const n = networks.get(name);
      if (!n) return false;
      const users = endpoints.list().filter((e) => e.network === name);
      if (users.length) {
        throw new NetworkError('network_in_use', `network "${name}" still has ${users.length} endpoint(s), e.g. ${users[0].containerId}/${users[0].ifName}`);
      }
      const deleted = await networks.delete(name);
      removeGateways(host, hostDevice, n);
      return deleted;
    },
  };
}

function ipamService(ipam: Ipam): IpamService {
  return {
    allocate: (network, owner, opts) => ipam.allocate(network, owner, opts ?? {}),
    releaseOwner: (owner) => ipam.releaseOwner(owner),
    releaseIp: (network, ip) => ipam.releaseIp(network, ip),
    pools: () => ipam.view(),
  };
}
