// The node agent's composition root: every part of the node is built here, in the order their
// dependencies dictate, each handed what it needs as parameters. Nothing registers itself; reading
// start() top to bottom is reading how the agent is wired.
import fs from 'node:fs';
import path from 'node:path';
import type http from 'node:http';
import type { Core } from '../core.ts';
import type { AgentStatus } from '../types.ts';
import type { Logger } from '../log.ts';
import type { AgentConfig } from './config.ts';
import { JournalStore } from '../store/journal.ts';
import { Ipam } from '../ipam/index.ts';
import { Networks } from '../network/index.ts';
import { EndpointManager } from '../endpoint/manager.ts';
import { enableForwarding, ensureGateways, ensureHostDevice } from '../endpoint/host-device.ts';
import { openNetlink } from '../netlink/index.ts';
import { warmThreadPool } from '../netns/index.ts';
import { loadDatapath } from '../bpf/datapath.ts';
import { tcxHooksBehindByDevice, warnTcxHooksBehind } from '../bpf/tcx.ts';
import { bpfRouter } from '../api/bpf-routes.ts';
import { createApp, serveApi } from '../api/server.ts';
import { VERSION } from '../version.ts';
import { acquireDirLock, acquirePidLock } from './pidlock.ts';
import { resolveBpfObject } from './paths.ts';
import { ensureConfiguredNetwork, ipamService, networkService } from './services.ts';
import { AgentPolicy } from './policy.ts';
import { ConntrackUpkeep } from './conntrack.ts';
import { startFlows, type AgentFlows } from './flows.ts';
import { connectCluster } from './cluster.ts';
import { rememberClusterRouting, removeLeftClusterRouting } from '../routing/record.ts';
import type { ClusterMode } from '../cluster/mode.ts';
import { AgentL7 } from './l7.ts';
import { ProxyDatapath } from '../l7/activation.ts';
import { AgentDns } from './dns.ts';
import { cniQueue } from './cni-queue.ts';
import { labelResolver } from './labels.ts';
import { parseLabelFilter } from '../labels/filter.ts';
import { datapathProblems } from '../health/datapath.ts';
import { StartClock } from './start-clock.ts';
import { warmObserverProto } from '../flows/proto.ts';
import { idleMemory, type IdleMemory, memoryStatus } from './idle-memory.ts';

/** Something the agent stops on shutdown, in reverse order of start. */
interface Closer {
  name: string;
  close(): Promise<void> | void;
}

export class Agent {
  readonly startedAt = Date.now();
  private server?: http.Server;
  private idle?: IdleMemory;

  private constructor(
    readonly cfg: AgentConfig,
    readonly log: Logger,
    readonly core: Core,
    private readonly endpoints: EndpointManager,
    private readonly policy: AgentPolicy,
    private readonly flows: AgentFlows,
    private readonly l7: AgentL7 | undefined,
    private readonly dns: AgentDns | undefined,
    private readonly datapath: { pinDir: string },
    /** What is wrong with the parts that have no status of their own (health/). */
    private readonly problems: { datapath(): string[]; store(): string | undefined },
    private readonly closers: Closer[],
    private readonly cluster?: ClusterMode,
  ) {}

  static async start(cfg: AgentConfig, log: Logger): Promise<Agent> {
    fs.mkdirSync(cfg.stateDir, { recursive: true, mode: 0o700 });
    const clock = new StartClock();
    const closers: Closer[] = [];
    const pidLock = acquirePidLock(path.join(cfg.stateDir, 'agent.pid'));
    closers.push({ name: 'pid lock', close: () => pidLock.release() });
    try {
      // Worker threads inherit the netns of the thread that starts them: start them while we are home.
      await warmThreadPool();
      clock.mark('threadPool');

      // Cluster mode: the node registers and gets its pod CIDRs before the networks are opened.
      const cluster = await connectCluster(cfg, log);
      if (cluster) closers.push({ name: 'cluster', close: () => cluster.close() });
      const networkSpecs = cluster ? cluster.networks(cfg.networks, cfg.cluster!.explicitDefaultPool) : cfg.networks;

      // State: store, IPAM, networks (the --pool networks exist before anything uses them).
      const store = new JournalStore(path.join(cfg.stateDir, 'store'), { log: log.child({ component: 'store' }) });
      closers.push({ name: 'store', close: () => store.close() });
      const ipam = await Ipam.open(store);
      if (cluster) {
        ipam.holdReleased(
          (ip) => cluster.ipcache.quarantined(ip),
          (ip) => cluster.ipcache.hold(ip),
        );
        const restored = cluster.ipcache.restoreHolds(ipam.restoredHolds());
        if (restored) log.info({ addresses: restored }, 'released addresses an earlier run held are held again');
      }
      const networks = await Networks.open(store, ipam);
      for (const spec of networkSpecs) await ensureConfiguredNetwork(networks, spec);
      clock.mark('state');

      // Kernel: the host device with every gateway, forwarding, the pinned datapath and its switches.
      const host = openNetlink();
      closers.push({ name: 'netlink', close: () => host.close() });
      ensureHostDevice(host, cfg.hostDevice);
      for (const n of networks.list()) ensureGateways(host, cfg.hostDevice, n);
      enableForwarding(networks.list().some((n) => n.subnets.some((s) => s.family === 6)));
      // Before anything reads or changes a pin: one agent per bpffs dir (pidlock.ts).
      fs.mkdirSync(cfg.bpffsDir, { recursive: true, mode: 0o700 });
      const pinLock = acquireDirLock(cfg.bpffsDir);
      closers.push({ name: 'bpffs dir lock', close: () => pinLock.release() });
      if (cluster)
        rememberClusterRouting(cfg.stateDir, { tunnelDevice: cfg.cluster!.tunnelDevice, nodeIp: cfg.cluster!.nodeIp! });
      else {
        const removed = removeLeftClusterRouting(host, cfg.stateDir, cfg.bpffsDir);
        if (removed.length) log.info({ removed }, 'single-node mode: removed the routing an earlier cluster-mode agent left');
      }
      const datapath = loadDatapath({ objectPath: resolveBpfObject(cfg.bpfObject), pinDir: cfg.bpffsDir, ctMax: cfg.ctMax });
      closers.push({ name: 'datapath', close: () => datapath.close() });
      datapath.setGlobalConfig({
        events: cfg.flowEvents,
        audit: cfg.policyAuditMode,
        eventsPerSecond: cfg.eventsPerSecond,
        ctPerEndpoint: cfg.ctMaxPerEndpoint,
      });
      // Cluster mode: the other nodes' pods through the tunnel device, or native routes.
      cluster?.startRouting(host, datapath);
      clock.mark('datapath');

      // The L7 proxy's port must be known before policy writes L7 entries; its workers start later.
      const ipv6 = networks.list().some((n) => n.subnets.some((s) => s.family === 6));
      const l7 = await AgentL7.open({ cfg, log, host, datapath, ipv6 });
      if (l7) closers.push({ name: 'l7 proxy', close: () => l7.close() });
      // The DNS proxy's port and what DNS taught (toFQDNs) before the first sync, like the L7 port.
      const dns = await AgentDns.open({ cfg, log, host, datapath, store, ipv6 });
      if (dns) closers.push({ name: 'dns proxy', close: () => dns.close() });
      // Their routing rule and socket lookup only once a policy needs them (before its entries).
      const proxyDatapath =
        l7 || dns
          ? new ProxyDatapath({
              host,
              hostDevice: cfg.hostDevice,
              ipv6,
              datapath,
              http: !!l7,
              log: log.child({ component: 'l7' }),
            })
          : undefined;
      const proxies =
        l7 || dns
          ? {
              proxyPorts: () => ({ ...(l7?.proxyPorts() ?? {}), ...(dns?.proxyPorts() ?? {}) }),
              activate: proxyDatapath!.activate,
              // Both hear about every change of the maps: the HTTP proxy's snapshot, the DNS answer cache's generation.
              onChange: () => {
                l7?.policyChanged();
                dns?.policyChanged();
              },
            }
          : undefined;

      // Policy first among the endpoint's dependencies: endpoints ask it for their identity.
      const policy = await AgentPolicy.open({
        store,
        datapath,
        log,
        auditMode: cfg.policyAuditMode,
        cluster,
        clusterName: cfg.cluster?.clusterName ?? 'default',
        labelFilter: parseLabelFilter(cfg.labelFilter),
        ...(proxies ? { l7: proxies } : {}),
        ...(dns ? { fqdn: dns.state } : {}),
      });
      closers.push({ name: 'policy', close: () => policy.close() });
      clock.mark('proxiesAndPolicy');
      // Labels: callers', the pod namespace, and what the container runtimes (CRI, Docker) know.
      // Docker's network names by network id, for `membrane network list`.
      const dockerNetworkNames = new Map<string, string>();
      const labels = labelResolver(cfg, log, (id, name) => {
        dockerNetworkNames.set(id, name);
      });
      closers.push({ name: 'label resolver', close: () => labels.close() });
      const endpoints = new EndpointManager({
        store,
        ipam,
        networks,
        datapath,
        host,
        identityFor: policy.identityFor,
        labels,
        log,
        reapDelayMs: cfg.endpointReapDelayMs,
      });
      const conntrack = new ConntrackUpkeep({
        datapath,
        log: log.child({ component: 'conntrack' }),
        intervalSeconds: cfg.conntrackGcIntervalSeconds,
      });
      // Cluster first: a relabeled pod's egress hold (native routing) is then in the relabel's own
      // policy sync, not one sync after it.
      if (cluster) endpoints.addHooks(cluster.endpointHooks());
      endpoints.addHooks(policy.hooks);
      const core: Core = {
        networks: networkService(networks, endpoints, host, cfg.hostDevice, (id) => dockerNetworkNames.get(id)),
        endpoints,
        ipam: ipamService(ipam),
      };

      log.info(await endpoints.restore(), 'endpoints restored');
      clock.mark('endpoints');
      closers.push({ name: 'endpoint upkeep', close: endpoints.startUpkeep(cfg.endpointUpkeepIntervalSeconds * 1000) });
      closers.push({ name: 'endpoint reaper', close: () => endpoints.closeReaper() });
      await policy.start();
      l7?.bind(policy.engine);
      await dns?.bind(policy.engine);
      // Cluster mode: publish the restored endpoints, then mirror the other nodes' ones.
      await cluster?.afterRestore(endpoints.list());
      // Our links go to the head of each tcx chain; a tool that put itself ahead later can end the
      // chain before our enforcement runs (bpf/tcx.ts: why we report it and do not move back).
      warnTcxHooksBehind(cfg.bpffsDir, log);
      clock.mark('policyStart');
      conntrack.start();
      closers.push({ name: 'conntrack GC', close: () => conntrack.close() });
      const flows = await startFlows({
        cfg,
        log,
        datapath,
        endpoints,
        rules: policy.rules,
        identities: policy.identities,
        ...(cluster ? { cluster: () => cluster.metricsView() } : {}),
      });
      closers.push({ name: 'flows', close: () => flows.close() });
      l7?.attachFlows(flows);
      dns?.attachFlows(flows);
      clock.mark('flows');

      // Front doors: DELs membrane-cni queued while we were down, the Docker plugin, then the API.
      const queue = cniQueue({ socket: cfg.socket, stateDir: cfg.stateDir, core, log });
      await queue.drain();
      closers.push({ name: 'CNI DEL queue', close: queue.start(cfg.endpointUpkeepIntervalSeconds * 1000) });
      if (cfg.dockerPlugin) closers.push(await startDocker(cfg, core, log));
      const problems = { datapath: () => datapathProblems(host, cfg.hostDevice, cfg.bpffsDir), store: () => store.problem() };
      const agent = new Agent(cfg, log, core, endpoints, policy, flows, l7, dns, datapath, problems, closers, cluster);
      const app = createApp({
        core,
        log,
        version: VERSION,
        status: () => agent.status(),
        check: (cid, ifName) => endpoints.check(cid, ifName),
        routers: [
          ...policy.routers(),
          {
            path: '/v1/bpf',
            router: bpfRouter({
              datapath,
              endpoints: () => endpoints.list(),
              labelsOf: (id) => policy.identities.labelsOf(id),
              ...(cluster ? { nodeNameOf: (id: number) => cluster.listNodes().find((n) => n.nodeId === id)?.name } : {}),
            }),
          },
          ...(cluster ? [{ path: '/v1/cluster', router: cluster.router() }] : []),
          ...(dns ? [{ path: '/v1/fqdn', router: dns.router() }] : []),
        ],
      });
      agent.server = await serveApi(app, cfg.socket);
      clock.mark('api');
      // Memory back to the node after each burst of requests (idle-memory.ts). Each give-back holds
      // the loop for its GCs (52-80 ms at 100 pods, ~600 ms with 10,000 rules; debug log 'idle: memory
      // given back'): after 1 s of quiet, so a steady trickle of requests meets one at most every 10 s,
      // and only past 4 MiB of growth (a pod's ADD alone grows the agent tens of KiB) or a young
      // generation still over 4 MiB (it starts at ~0.5 MiB; a burst grows it up to 32 MiB).
      const idle = idleMemory({
        idleMs: 1000,
        minIntervalMs: 10_000,
        deepIdleMs: 5500,
        minGrowthBytes: 4 << 20,
        minYoungBytes: 4 << 20,
        log,
      });
      agent.idle = idle;
      closers.push({ name: 'idle memory', close: () => idle.stop() });
      agent.server.on('request', (_req: http.IncomingMessage, res: http.ServerResponse) => {
        idle.touch();
        res.once('finish', idle.touch);
      });
      // The proxy's record batches (every ~15 ms under load) are work too: no give-back, whose two
      // full GCs hold the loop 50-80 ms, while they stream in (bench:l7 met one 1 s into each run,
      // after its status request).
      l7?.onRecords(idle.touch);
      // Restore left the container sides for now (endpoint/restore.ts): checked while the API serves,
      // the endpoints reported verifying until then. The datapath forwards and enforces meanwhile.
      closers.push({ name: 'restore verification', close: () => endpoints.stopVerifying() });
      const verifyStart = performance.now();
      void endpoints
        .verifyRestored()
        .then(
          (done) => log.info({ ...done, ms: Math.round(performance.now() - verifyStart) }, 'restored endpoints verified'),
          (err) => log.warn({ err }, 'verifying the restored endpoints failed'),
        )
        .finally(() => {
          // The observer's protobuf reflection, its services serving without it until a client calls:
          // built a little later, in one piece that holds the event loop (~0.2 s), not in the way of
          // the first requests after a restart.
          setTimeout(warmObserverProto, 1000).unref();
        });
      log.info(
        {
          startMs: clock.summary(),
          socket: cfg.socket,
          stateDir: cfg.stateDir,
          bpffsDir: cfg.bpffsDir,
          networks: networks.list().map((n) => n.name),
        },
        'membrane agent ready',
      );
      return agent;
    } catch (e) {
      await closeAll(closers, log);
      throw e;
    }
  }

  status(): AgentStatus {
    const f = this.flows.status();
    const storeProblem = this.problems.store() ?? this.policy.storeProblem();
    return {
      version: VERSION,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      endpoints: this.endpoints.list().length,
      unhealthyEndpoints: this.endpoints.unhealthyEndpoints(),
      verifyingEndpoints: this.endpoints.verifyingEndpoints(),
      networks: this.core.networks.list().length,
      stateDir: this.cfg.stateDir,
      socket: this.cfg.socket,
      datapath: {
        pinDir: this.datapath.pinDir,
        attach: 'tcx',
        hostDevice: this.cfg.hostDevice,
        problems: this.problems.datapath(),
        behindForeign: tcxHooksBehindByDevice(this.datapath.pinDir),
      },
      store: storeProblem ? { problem: storeProblem } : {},
      nodeName: this.cfg.nodeName,
      observer: f.observer,
      metrics: f.metrics,
      policy: this.policy.status(),
      ...(this.cluster ? { cluster: this.cluster.status() } : {}),
      ...(this.l7 ? { l7: this.l7.status() } : {}),
      ...(this.dns ? { dns: this.dns.status() } : {}),
      memory: memoryStatus(this.idle),
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
    await closeAll(this.closers, this.log);
  }
}

async function closeAll(closers: Closer[], log: Logger): Promise<void> {
  for (const c of closers.splice(0).reverse()) {
    try {
      await c.close();
    } catch (err) {
      log.warn({ err, part: c.name }, 'did not close cleanly');
    }
  }
}

/** The Docker plugin is a front door the agent hosts: the one place shared/ reaches into docker-plugin/
 *  (loaded on demand, so an agent without it never pays for dockerode). */
async function startDocker(cfg: AgentConfig, core: Core, log: Logger): Promise<Closer> {
  const { startDockerPlugin } = await import('../../../docker-plugin/src/index.ts');
  const plugin = await startDockerPlugin({
    core,
    name: cfg.dockerPlugin!,
    pluginDir: cfg.dockerPluginDir,
    stateDir: cfg.stateDir,
    log: log.child({ component: 'docker-plugin' }),
  });
  return { name: 'docker plugin', close: () => plugin.close() };
}
