// Agent configuration from flags, environment and an optional YAML/JSON file, in that precedence.
// One table (OPTIONS, config-options.ts) names every setting once: its flag, its environment variable,
// its file key, its default and how its text is read; commander parses the flags and writes --help
// from the same table (config-flags.ts); config-values.ts reads and checks single values.
// Pure: the caller passes argv, env and a file reader, so every rule is unit-testable.
import os from 'node:os';
import { parse as parseYaml } from 'yaml';
import { ifNameProblem } from '../net/index.ts';
import type { NetworkSpec } from '../types.ts';
import type { TcpClientLimits } from '../dns/tcp-clients.ts';
import { DEFAULT_LABEL_FILTER, parseLabelFilter } from '../labels/filter.ts';
import { DEFAULT_LABEL_TIMEOUT_MS } from '../labels/resolver.ts';
import { DEFAULT_CRI_SOCKET } from '../labels/cri.ts';
import { dockerApiTarget, type DockerApiTarget } from '../labels/docker-host.ts';
import { DEFAULTS, FileSchema, LOG_LEVELS, OPTIONS, type FileConfig, type Key } from './config-options.ts';
import { parseFlags } from './config-flags.ts';
import { ConfigError, dnsTcpLimits, int, observerTls, onOff, poolsToNetworks, routingFlags } from './config-values.ts';

export { DEFAULTS, type FileConfig } from './config-options.ts';
export { helpText, parseFlags } from './config-flags.ts';
export { ConfigError, poolsToNetworks } from './config-values.ts';

export interface AgentConfig {
  stateDir: string;
  bpffsDir: string;
  socket: string;
  hostDevice: string;
  /** Networks created at start from --pool; the unnamed ones form "default". */
  networks: NetworkSpec[];
  logLevel: string;
  nodeName: string;
  bpfObject?: string;
  dockerPlugin?: string;
  dockerPluginDir: string;
  dockerSocket?: string;
  /** The Docker API the Docker label source reads: --docker-socket, else DOCKER_HOST, else the default. */
  dockerApi: DockerApiTarget;
  /** containerd's CRI socket, asked for the pod labels of a CNI ADD from kubelet. */
  criSocket: string;
  /** Which labels take part in an identity (labels/filter.ts). */
  labelFilter: string;
  /** How long an endpoint may wait for its runtime's labels before it goes on in init. */
  labelTimeoutMs: number;
  mtu?: number;
  /** host:port for Prometheus metrics, or "off". */
  metricsAddress: string;
  /** gRPC observer (flows) on this unix socket; observerAddress adds a TCP listener. */
  observerSocket: string;
  observerAddress?: string;
  /** TLS on the observer's TCP listener (PEM files): a cluster's relay connects with a client cert. */
  observerTls?: { certFile: string; keyFile: string; clientCaFile?: string };
  /** Flows kept in memory for GetFlows. */
  flowBufferSize: number;
  /** Flow and drop events from the datapath (off for benchmarking their cost). */
  flowEvents: boolean;
  /** Per-CPU limit of flow and drop events a second (0 = unlimited). */
  eventsPerSecond: number;
  /** Agent-wide policy audit mode: would-be drops are reported, traffic passes. */
  policyAuditMode: boolean;
  /** Seconds between conntrack garbage collections. */
  conntrackGcIntervalSeconds: number;
  /** Seconds between retries of unhealthy endpoints (and releases of orphaned addresses). */
  endpointUpkeepIntervalSeconds: number;
  /** Conntrack table size (--ct-max). */
  ctMax: number;
  /** Conntrack entries one endpoint may own; 0 = no limit (default a quarter of ctMax). */
  ctMaxPerEndpoint: number;
  /** Milliseconds between a DEL and the removal of the endpoint's interface and flows (its traffic is
   *  dropped meanwhile; tests hold it to probe that window). */
  endpointReapDelayMs: number;
  /** The L7 (HTTP) proxy for toPorts[].rules: off refuses policies with L7 rules. */
  l7Proxy: boolean;
  /** Its port on 127.0.0.1 and ::1; 0 = picked once and kept in the state dir. */
  l7ProxyPort: number;
  l7ProxyWorkers: number;
  /** Connections one source may hold open at a proxy worker at once (l7/proxy/source-limit.ts); 0: a
   *  sixteenth of the worker's fd limit, at most 1,024. */
  l7ProxyMaxConnsPerSource: number;
  /** The DNS proxy for toPorts[].rules.dns and toFQDNs: off refuses policies with DNS rules. */
  dnsProxy: boolean;
  /** Its port (UDP and TCP) on 127.0.0.1 and ::1; 0 = picked once and kept in the state dir. */
  dnsProxyPort: number;
  /** Worker threads relaying the DNS proxy's UDP (0: the agent's thread does). */
  dnsProxyWorkers: number;
  /** The datapath answers a pod's repeated UDP DNS query from the answers the proxy relayed, until
   *  their TTL (shared/src/dns/answer-cache.ts). */
  dnsCache: boolean;
  /** Bounds on the DNS proxy's TCP client connections (dns/tcp-clients.ts says why they exist). */
  dnsProxyTcp: TcpClientLimits;
  /** Addresses learned from DNS stay at least this many seconds (when the answer's TTL is shorter). */
  fqdnMinTtl: number;
  /** Cluster mode (shared/src/cluster): set when --kvstore is given. */
  cluster?: ClusterFlags;
}

/** Cluster-mode settings as given; shared/src/kvstore/config.ts checks them. */
export interface ClusterFlags {
  clusterName?: string;
  kvstore: string;
  kvstoreEndpoints?: string;
  kvstoreCa?: string;
  kvstoreCert?: string;
  kvstoreKey?: string;
  nodeIp?: string;
  leaseTtlSeconds: number;
  /** Cut off from the store this long, remote endpoints leave the datapath (0: never). */
  maxStaleSeconds: number;
  /** --pool named the default network (cluster mode ignores it: the operator allocates). */
  explicitDefaultPool: boolean;
  /** How pods reach other nodes' pods: the VXLAN overlay (default) or routes the underlay carries. */
  routingMode: 'tunnel' | 'native';
  tunnelPort: number;
  tunnelDevice: string;
}

function readFileConfig(path: string, readFile: (p: string) => string): FileConfig {
  let text: string;
  try {
    text = readFile(path);
  } catch (e) {
    throw new ConfigError(`cannot read config file ${path}: ${(e as Error).message}`);
  }
  const parsed = FileSchema.safeParse(parseYaml(text) ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ConfigError(`config file ${path}: ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  return parsed.data;
}

export function resolveConfig(argv: string[], env: NodeJS.ProcessEnv, readFile: (p: string) => string): AgentConfig {
  const flags = parseFlags(argv);
  const envOf = (key: Key) => {
    const name = OPTIONS.find((o) => o.key === key)?.env;
    return name ? env[name] : undefined;
  };
  const configPath = flags.config ?? envOf('config');
  const file: FileConfig = configPath ? readFileConfig(configPath, readFile) : {};
  /** flag, else environment, as text; with where it came from for error messages. */
  const text = (key: Exclude<Key, 'pools' | 'policyAuditMode' | 'config'>): { text: string; from: string } | undefined => {
    const spec = OPTIONS.find((o) => o.key === key)!;
    const f = flags[key];
    if (f !== undefined) return { text: f, from: spec.flags.split(' ')[0] };
    const e = envOf(key);
    return e !== undefined ? { text: e, from: spec.env! } : undefined;
  };
  const str = (key: Parameters<typeof text>[0]) => text(key)?.text;

  const envPools = envOf('pools')
    ?.split(';')
    .map((s) => s.trim())
    .filter(Boolean);
  const pools = flags.pools.length ? flags.pools : envPools?.length ? envPools : (file.pools ?? [...DEFAULTS.pools]);
  const mtu = int(text('mtu'), file.mtu, { min: 576, max: 65535 });
  const hostDevice = str('hostDevice') ?? file.hostDevice ?? DEFAULTS.hostDevice;
  const hostProblem = ifNameProblem(hostDevice);
  if (hostProblem) throw new ConfigError(`--host-device "${hostDevice}" is not a valid interface name: it ${hostProblem}`);
  const logLevel = str('logLevel') ?? file.logLevel ?? DEFAULTS.logLevel;
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel))
    throw new ConfigError(`--log-level "${logLevel}" is not one of trace, debug, info, warn, error`);
  const ctMax = int(text('ctMax'), file.ctMax, { min: 1024, max: 1 << 24 }) ?? DEFAULTS.ctMax;
  const labelFilter = str('labelFilter') ?? file.labelFilter ?? DEFAULT_LABEL_FILTER;
  try {
    parseLabelFilter(labelFilter);
  } catch (e) {
    throw new ConfigError(`--label-filter: ${(e as Error).message}`);
  }
  // Docker API: --docker-socket (or DOCKER_SOCKET) wins, then DOCKER_HOST as every Docker client
  // reads it, then the config file's dockerSocket, then the default socket.
  const explicitSocket = str('dockerSocket');
  const dockerSocket = explicitSocket ?? file.dockerSocket;
  let dockerApi: DockerApiTarget;
  try {
    dockerApi = explicitSocket
      ? { socketPath: explicitSocket }
      : dockerApiTarget(undefined, { DOCKER_HOST: env.DOCKER_HOST || undefined });
    if (!explicitSocket && !env.DOCKER_HOST && file.dockerSocket) dockerApi = { socketPath: file.dockerSocket };
  } catch (e) {
    // Only an agent serving Docker reads it: a DOCKER_HOST meant for something else must not stop others.
    if (str('dockerPlugin') ?? file.dockerPlugin) throw new ConfigError(`${(e as Error).message}`);
    dockerApi = dockerApiTarget(undefined, {});
  }
  const kvstore = str('kvstore') ?? file.kvstore;
  const cluster: ClusterFlags | undefined = kvstore
    ? {
        kvstore,
        clusterName: str('clusterName') ?? file.clusterName,
        kvstoreEndpoints: str('kvstoreEndpoints') ?? file.kvstoreEndpoints,
        kvstoreCa: str('kvstoreCa') ?? file.kvstoreCa,
        kvstoreCert: str('kvstoreCert') ?? file.kvstoreCert,
        kvstoreKey: str('kvstoreKey') ?? file.kvstoreKey,
        nodeIp: str('nodeIp') ?? file.nodeIp,
        leaseTtlSeconds: int(text('kvstoreLeaseTtl'), file.kvstoreLeaseTtl, { min: 2, max: 3600 }) ?? 15,
        maxStaleSeconds: int(text('kvstoreMaxStale'), file.kvstoreMaxStale, { min: 0, max: 86_400 }) ?? 0,
        explicitDefaultPool:
          (flags.pools.length > 0 || !!envPools?.length || !!file.pools) &&
          poolsToNetworks(pools).some((n) => n.name === 'default'),
        ...routingFlags(text, file),
      }
    : undefined;
  if (!kvstore && (str('kvstoreEndpoints') || str('nodeIp') || flags.clusterName))
    throw new ConfigError('--kvstore-endpoints, --cluster-name and --node-ip need --kvstore etcd');
  const routingGiven = (['routingMode', 'tunnel', 'tunnelPort', 'tunnelDevice'] as const).find(
    (k) => text(k) || file[k] !== undefined,
  );
  if (!kvstore && routingGiven)
    throw new ConfigError(
      `${OPTIONS.find((o) => o.key === routingGiven)!.flags.split(' ')[0]} is for cluster mode (--kvstore etcd)`,
    );
  const auditEnv = envOf('policyAuditMode');
  const audit =
    flags.policyAuditMode ??
    onOff(
      auditEnv === undefined ? undefined : { text: auditEnv, from: 'MEMBRANE_POLICY_AUDIT_MODE' },
      file.policyAuditMode ?? false,
    );
  return {
    stateDir: str('stateDir') ?? file.stateDir ?? DEFAULTS.stateDir,
    bpffsDir: str('bpffsDir') ?? file.bpffsDir ?? DEFAULTS.bpffsDir,
    socket: str('socket') ?? file.socket ?? DEFAULTS.socket,
    hostDevice,
    networks: poolsToNetworks(pools, mtu),
    logLevel,
    nodeName: str('nodeName') ?? file.nodeName ?? os.hostname(),
    bpfObject: str('bpfObject') ?? file.bpfObject,
    dockerPlugin: str('dockerPlugin') ?? file.dockerPlugin,
    dockerPluginDir: str('dockerPluginDir') ?? file.dockerPluginDir ?? DEFAULTS.dockerPluginDir,
    dockerSocket,
    dockerApi,
    criSocket: str('criSocket') ?? file.criSocket ?? DEFAULT_CRI_SOCKET,
    labelFilter,
    labelTimeoutMs:
      (int(text('labelTimeoutSeconds'), file.labelTimeoutSeconds, { min: 1, max: 600 }) ?? DEFAULT_LABEL_TIMEOUT_MS / 1000) *
      1000,
    mtu,
    metricsAddress: str('metricsAddress') ?? file.metricsAddress ?? DEFAULTS.metricsAddress,
    observerSocket: str('observerSocket') ?? file.observerSocket ?? DEFAULTS.observerSocket,
    observerAddress: str('observerAddress') ?? file.observerAddress,
    ...observerTls(
      str('observerTlsCertFile') ?? file.observerTlsCertFile,
      str('observerTlsKeyFile') ?? file.observerTlsKeyFile,
      str('observerTlsClientCaFiles') ?? file.observerTlsClientCaFiles,
      str('observerAddress') ?? file.observerAddress,
    ),
    flowBufferSize: int(text('flowBufferSize'), file.flowBufferSize, { min: 1 }) ?? DEFAULTS.flowBufferSize,
    flowEvents: onOff(text('flowEvents'), file.flowEvents ?? true),
    eventsPerSecond: int(text('eventsPerSecond'), file.eventsPerSecond, { min: 0 }) ?? DEFAULTS.eventsPerSecond,
    policyAuditMode: audit,
    conntrackGcIntervalSeconds:
      int(text('conntrackGcIntervalSeconds'), file.conntrackGcIntervalSeconds, { min: 1, max: 86_400 }) ??
      DEFAULTS.conntrackGcIntervalSeconds,
    endpointUpkeepIntervalSeconds:
      int(text('endpointUpkeepIntervalSeconds'), file.endpointUpkeepIntervalSeconds, { min: 1, max: 86_400 }) ??
      DEFAULTS.endpointUpkeepIntervalSeconds,
    ctMax,
    ctMaxPerEndpoint: int(text('ctMaxPerEndpoint'), file.ctMaxPerEndpoint, { min: 0, max: 1 << 24 }) ?? Math.floor(ctMax / 4),
    endpointReapDelayMs: int(text('endpointReapDelayMs'), file.endpointReapDelayMs, { min: 0, max: 600_000 }) ?? 0,
    l7Proxy: onOff(text('l7Proxy'), file.l7Proxy ?? true),
    l7ProxyPort: int(text('l7ProxyPort'), file.l7ProxyPort, { min: 0, max: 65535 }) ?? 0,
    l7ProxyWorkers: int(text('l7ProxyWorkers'), file.l7ProxyWorkers, { min: 1, max: 64 }) ?? DEFAULTS.l7ProxyWorkers,
    l7ProxyMaxConnsPerSource:
      int(text('l7ProxyMaxConnsPerSource'), file.l7ProxyMaxConnsPerSource, { min: 0, max: 1_000_000 }) ?? 0,
    dnsProxy: onOff(text('dnsProxy'), file.dnsProxy ?? true),
    dnsProxyPort: int(text('dnsProxyPort'), file.dnsProxyPort, { min: 0, max: 65535 }) ?? 0,
    dnsProxyWorkers: int(text('dnsProxyWorkers'), file.dnsProxyWorkers, { min: 0, max: 64 }) ?? DEFAULTS.dnsProxyWorkers,
    dnsCache: onOff(text('dnsCache'), file.dnsCache ?? true),
    dnsProxyTcp: dnsTcpLimits(text, file),
    fqdnMinTtl: int(text('fqdnMinTtl'), file.fqdnMinTtl, { min: 0, max: 86_400 * 7 }) ?? 0,
    ...(cluster ? { cluster } : {}),
  };
}
