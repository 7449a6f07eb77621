// Agent configuration from flags, environment and an optional YAML/JSON file, in that precedence.
// One table (OPTIONS) names every setting once: its flag, its environment variable, its file key, its
// default and how its text is read; commander parses the flags and writes --help from the same table.
// Pure: the caller passes argv, env and a file reader, so every rule is unit-testable.
import os from 'node:os';
import { Command, CommanderError, Option } from 'commander';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { ifNameProblem, parseCidr } from '../net/index.ts';
import type { NetworkSpec } from '../types.ts';
import { DEFAULT_LABEL_FILTER, parseLabelFilter } from '../labels/filter.ts';
import { DEFAULT_LABEL_TIMEOUT_MS } from '../labels/resolver.ts';
import { DEFAULT_CRI_SOCKET } from '../labels/cri.ts';
import { dockerApiTarget, type DockerApiTarget } from '../labels/docker-host.ts';

export const DEFAULTS = {
  stateDir: '/var/lib/membrane',
  bpffsDir: '/sys/fs/bpf/membrane',
  socket: '/run/membrane/agent.sock',
  hostDevice: 'membrane0',
  pools: ['10.200.0.0/16'],
  logLevel: 'info',
  dockerPluginDir: '/run/docker/plugins',
  metricsAddress: '127.0.0.1:9962',
  observerSocket: '/run/membrane/observer.sock',
  flowBufferSize: 4096,
  /** Per-CPU flow/drop event rate limit: a flood of dropped packets must not flood the agent. Sized
   *  above the datapath's full connection rate (~15k conn/s x 4 events, possibly all on one CPU) and
   *  below what the agent ingests without loss (500k/s, bench:flows ingest). */
  eventsPerSecond: 100_000,
  /** Expired conntrack entries are collected this often. */
  conntrackGcIntervalSeconds: 15,
  /** Unhealthy endpoints are tried again, orphaned addresses released, queued CNI DELs drained, this often. */
  endpointUpkeepIntervalSeconds: 30,
  /** Conntrack entries (a preallocated hash, ~200 B each: 25 MiB). */
  ctMax: 131072,
  /** L7 proxy workers: one per CPU, at most two (the proxy shares the node with the pods it serves). */
  l7ProxyWorkers: Math.max(1, Math.min(2, os.availableParallelism?.() ?? os.cpus().length)),
} as const;

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
  /** The DNS proxy for toPorts[].rules.dns and toFQDNs: off refuses policies with DNS rules. */
  dnsProxy: boolean;
  /** Its port (UDP and TCP) on 127.0.0.1 and ::1; 0 = picked once and kept in the state dir. */
  dnsProxyPort: number;
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
  /** --pool named the default network (cluster mode ignores it: the operator allocates). */
  explicitDefaultPool: boolean;
  /** How pods reach other nodes' pods: the VXLAN overlay (default) or routes the underlay carries. */
  routingMode: 'tunnel' | 'native';
  tunnelPort: number;
  tunnelDevice: string;
}

export class ConfigError extends Error {
  constructor(message: string) { super(message); this.name = 'ConfigError'; }
}

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
const IFNAME = z.string().refine((s) => !ifNameProblem(s), 'not a valid interface name');

const FileSchema = z.object({
  stateDir: z.string().min(1).optional(),
  bpffsDir: z.string().min(1).optional(),
  socket: z.string().min(1).optional(),
  hostDevice: IFNAME.optional(),
  pools: z.array(z.string()).optional(),
  logLevel: z.enum(LOG_LEVELS).optional(),
  nodeName: z.string().min(1).optional(),
  bpfObject: z.string().optional(),
  dockerPlugin: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/).optional(),
  dockerPluginDir: z.string().optional(),
  dockerSocket: z.string().optional(),
  criSocket: z.string().optional(),
  labelFilter: z.string().optional(),
  labelTimeoutSeconds: z.number().int().min(1).max(600).optional(),
  mtu: z.number().int().min(576).max(65535).optional(),
  metricsAddress: z.string().optional(),
  observerSocket: z.string().optional(),
  observerAddress: z.string().optional(),
  observerTlsCertFile: z.string().optional(),
  observerTlsKeyFile: z.string().optional(),
  observerTlsClientCaFiles: z.string().optional(),
  flowBufferSize: z.number().int().min(1).max(10_000_000).optional(),
  flowEvents: z.boolean().optional(),
  eventsPerSecond: z.number().int().min(0).optional(),
  policyAuditMode: z.boolean().optional(),
  conntrackGcIntervalSeconds: z.number().int().min(1).max(86_400).optional(),
  endpointUpkeepIntervalSeconds: z.number().int().min(1).max(86_400).optional(),
  ctMax: z.number().int().min(1024).max(1 << 24).optional(),
  ctMaxPerEndpoint: z.number().int().min(0).max(1 << 24).optional(),
  endpointReapDelayMs: z.number().int().min(0).max(600_000).optional(),
  l7Proxy: z.boolean().optional(),
  l7ProxyPort: z.number().int().min(0).max(65535).optional(),
  l7ProxyWorkers: z.number().int().min(1).max(64).optional(),
  dnsProxy: z.boolean().optional(),
  dnsProxyPort: z.number().int().min(0).max(65535).optional(),
  fqdnMinTtl: z.number().int().min(0).max(86_400 * 7).optional(),
  clusterName: z.string().optional(),
  kvstore: z.string().optional(),
  kvstoreEndpoints: z.string().optional(),
  kvstoreCa: z.string().optional(),
  kvstoreCert: z.string().optional(),
  kvstoreKey: z.string().optional(),
  kvstoreLeaseTtl: z.number().int().min(2).max(3600).optional(),
  nodeIp: z.string().optional(),
  routingMode: z.enum(['tunnel', 'native']).optional(),
  tunnel: z.enum(['vxlan', 'disabled']).optional(),
  tunnelPort: z.number().int().min(1).max(65535).optional(),
  tunnelDevice: IFNAME.optional(),
}).strict();

export type FileConfig = z.infer<typeof FileSchema>;
type Key = keyof FileConfig | 'config';

/** One setting: its flag (commander syntax), environment variable, help text and default shown in --help. */
interface OptionSpec {
  key: Key;
  flags: string;
  env?: string;
  help: string;
  default?: string;
}

const OPTIONS: OptionSpec[] = [
  { key: 'stateDir', flags: '--state-dir <dir>', env: 'MEMBRANE_STATE_DIR', help: 'persistent state', default: DEFAULTS.stateDir },
  { key: 'bpffsDir', flags: '--bpffs-dir <dir>', env: 'MEMBRANE_BPFFS_DIR', help: 'pinned BPF maps and programs', default: DEFAULTS.bpffsDir },
  { key: 'socket', flags: '--socket <path>', env: 'MEMBRANE_SOCKET', help: 'REST API unix socket, mode 0660', default: DEFAULTS.socket },
  { key: 'pools', flags: '--pool <[name=]cidr[,cidr6]>', env: 'MEMBRANE_POOLS', help: "a network's subnets, repeatable (env: ';'-separated)", default: `default=${DEFAULTS.pools[0]}` },
  { key: 'hostDevice', flags: '--host-device <name>', env: 'MEMBRANE_HOST_DEVICE', help: "veth holding every network's gateway address", default: DEFAULTS.hostDevice },
  { key: 'mtu', flags: '--mtu <n>', env: 'MEMBRANE_MTU', help: 'MTU of the networks given by --pool', default: '1500' },
  { key: 'nodeName', flags: '--node-name <name>', env: 'MEMBRANE_NODE_NAME', help: 'node name in flows and status', default: 'the hostname' },
  { key: 'bpfObject', flags: '--bpf-object <path>', env: 'MEMBRANE_BPF_OBJECT', help: 'compiled datapath', default: 'dist/bpf/endpoint.o next to the executable' },
  { key: 'dockerPlugin', flags: '--docker-plugin [name]', env: 'MEMBRANE_DOCKER_PLUGIN', help: 'serve the Docker network/IPAM plugin NAME (default name: membrane)' },
  { key: 'dockerPluginDir', flags: '--docker-plugin-dir <dir>', help: 'where dockerd looks for plugin sockets', default: DEFAULTS.dockerPluginDir },
  { key: 'dockerSocket', flags: '--docker-socket <path>', env: 'DOCKER_SOCKET', help: 'Docker API socket for container labels (wins over DOCKER_HOST)', default: 'DOCKER_HOST, else /var/run/docker.sock' },
  { key: 'criSocket', flags: '--cri-socket <path>', env: 'MEMBRANE_CRI_SOCKET', help: "containerd's CRI socket, asked for the labels of kubelet's pods", default: DEFAULT_CRI_SOCKET },
  { key: 'labelFilter', flags: '--label-filter <patterns>', env: 'MEMBRANE_LABEL_FILTER', help: 'labels that make up identities: [!][source:]regex patterns, first match decides, unmatched labels are kept', default: DEFAULT_LABEL_FILTER },
  { key: 'labelTimeoutSeconds', flags: '--label-timeout <seconds>', env: 'MEMBRANE_LABEL_TIMEOUT', help: "how long a new endpoint waits (link down) for its runtime's labels before it goes on with identity init", default: String(DEFAULT_LABEL_TIMEOUT_MS / 1000) },
  { key: 'metricsAddress', flags: '--metrics-address <host:port>', env: 'MEMBRANE_METRICS_ADDRESS', help: 'Prometheus metrics, or "off"', default: DEFAULTS.metricsAddress },
  { key: 'observerSocket', flags: '--observer-socket <path>', env: 'MEMBRANE_OBSERVER_SOCKET', help: 'gRPC flow observer socket', default: DEFAULTS.observerSocket },
  { key: 'observerAddress', flags: '--observer-address <host:port>', env: 'MEMBRANE_OBSERVER_ADDRESS', help: 'also serve the observer on TCP' },
  { key: 'observerTlsCertFile', flags: '--observer-tls-cert-file <file>', env: 'MEMBRANE_OBSERVER_TLS_CERT_FILE', help: "TLS on the observer's TCP listener: this node's certificate (scripts/cluster-certs.sh)" },
  { key: 'observerTlsKeyFile', flags: '--observer-tls-key-file <file>', env: 'MEMBRANE_OBSERVER_TLS_KEY_FILE', help: 'its key' },
  { key: 'observerTlsClientCaFiles', flags: '--observer-tls-client-ca-files <file>', env: 'MEMBRANE_OBSERVER_TLS_CLIENT_CA_FILES', help: 'clients (the relay) must show a certificate this CA signed' },
  { key: 'flowBufferSize', flags: '--flow-buffer <n>', env: 'MEMBRANE_FLOW_BUFFER', help: 'flows kept in memory', default: String(DEFAULTS.flowBufferSize) },
  { key: 'flowEvents', flags: '--flow-events <on|off>', env: 'MEMBRANE_FLOW_EVENTS', help: 'flow and drop events from the datapath', default: 'on' },
  { key: 'eventsPerSecond', flags: '--events-per-second <n>', env: 'MEMBRANE_EVENTS_PER_SECOND', help: 'per-CPU limit of flow and drop events a second, 0 = none', default: String(DEFAULTS.eventsPerSecond) },
  { key: 'policyAuditMode', flags: '--policy-audit-mode', env: 'MEMBRANE_POLICY_AUDIT_MODE', help: 'report would-be policy drops, let traffic pass (all endpoints; env on|off)' },
  { key: 'conntrackGcIntervalSeconds', flags: '--conntrack-gc-interval <seconds>', env: 'MEMBRANE_CONNTRACK_GC_INTERVAL', help: 'how often expired conntrack entries are collected', default: String(DEFAULTS.conntrackGcIntervalSeconds) },
  { key: 'endpointUpkeepIntervalSeconds', flags: '--endpoint-upkeep-interval <seconds>', env: 'MEMBRANE_ENDPOINT_UPKEEP_INTERVAL', help: 'how often endpoints the agent could not restore are tried again, endpoints whose netns is gone removed, orphaned addresses released and DELs queued by membrane-cni drained', default: String(DEFAULTS.endpointUpkeepIntervalSeconds) },
  { key: 'ctMax', flags: '--ct-max <n>', env: 'MEMBRANE_CT_MAX', help: 'conntrack entries, preallocated (~200 B each); a full table refuses new flows, never evicts', default: String(DEFAULTS.ctMax) },
  { key: 'ctMaxPerEndpoint', flags: '--ct-max-per-endpoint <n>', env: 'MEMBRANE_CT_MAX_PER_ENDPOINT', help: "conntrack entries one endpoint may own; beyond them its new flows are dropped; 0 = no limit", default: 'a quarter of --ct-max' },
  { key: 'endpointReapDelayMs', flags: '--endpoint-reap-delay <ms>', env: 'MEMBRANE_ENDPOINT_REAP_DELAY', help: "after a DEL (the endpoint's traffic is dropped at once), wait this long before removing its interface and flows", default: '0' },
  { key: 'l7Proxy', flags: '--l7-proxy <on|off>', env: 'MEMBRANE_L7_PROXY', help: 'the HTTP proxy that enforces toPorts[].rules.http (started when a policy needs it)', default: 'on' },
  { key: 'l7ProxyPort', flags: '--l7-proxy-port <port>', env: 'MEMBRANE_L7_PROXY_PORT', help: 'its port on 127.0.0.1/::1, 0 = pick one and keep it', default: '0' },
  { key: 'l7ProxyWorkers', flags: '--l7-proxy-workers <n>', env: 'MEMBRANE_L7_PROXY_WORKERS', help: 'proxy worker processes', default: `${DEFAULTS.l7ProxyWorkers} (CPUs, at most 2)` },
  { key: 'dnsProxy', flags: '--dns-proxy <on|off>', env: 'MEMBRANE_DNS_PROXY', help: 'the DNS proxy that enforces toPorts[].rules.dns and teaches toFQDNs their addresses', default: 'on' },
  { key: 'dnsProxyPort', flags: '--dns-proxy-port <port>', env: 'MEMBRANE_DNS_PROXY_PORT', help: 'its port (UDP and TCP) on 127.0.0.1/::1, 0 = pick one and keep it', default: '0' },
  { key: 'fqdnMinTtl', flags: '--fqdn-min-ttl <seconds>', env: 'MEMBRANE_FQDN_MIN_TTL', help: 'addresses learned from DNS are kept at least this long (longer while connections use them)', default: '0 (the answer\'s TTL)' },
  { key: 'clusterName', flags: '--cluster-name <name>', env: 'MEMBRANE_CLUSTER_NAME', help: 'cluster mode: the cluster this node joins', default: 'default' },
  { key: 'kvstore', flags: '--kvstore <etcd>', env: 'MEMBRANE_KVSTORE', help: 'cluster mode: share identities, endpoints and policies through etcd' },
  { key: 'kvstoreEndpoints', flags: '--kvstore-endpoints <url,...>', env: 'MEMBRANE_KVSTORE_ENDPOINTS', help: 'etcd client URLs' },
  { key: 'kvstoreCa', flags: '--kvstore-ca <file>', help: 'CA bundle for https etcd endpoints' },
  { key: 'kvstoreCert', flags: '--kvstore-cert <file>', help: 'client certificate for etcd' },
  { key: 'kvstoreKey', flags: '--kvstore-key <file>', help: 'client key for etcd' },
  { key: 'kvstoreLeaseTtl', flags: '--kvstore-lease-ttl <seconds>', help: "this node's lease: a dead node leaves the cluster after this long", default: '15' },
  { key: 'nodeIp', flags: '--node-ip <addr>', env: 'MEMBRANE_NODE_IP', help: "cluster mode: the node's underlay address other nodes reach it at" },
  { key: 'routingMode', flags: '--routing-mode <tunnel|native>', env: 'MEMBRANE_ROUTING_MODE', help: "cluster mode: pods reach other nodes' pods through the VXLAN overlay (tunnel) or routes via the node addresses (native)", default: 'tunnel' },
  { key: 'tunnel', flags: '--tunnel <vxlan|disabled>', env: 'MEMBRANE_TUNNEL', help: 'cluster mode: the tunnel protocol; disabled = --routing-mode native', default: 'vxlan' },
  { key: 'tunnelPort', flags: '--tunnel-port <port>', env: 'MEMBRANE_TUNNEL_PORT', help: 'UDP port of the VXLAN overlay (the same on every node)', default: '8472' },
  { key: 'tunnelDevice', flags: '--tunnel-device <name>', env: 'MEMBRANE_TUNNEL_DEVICE', help: 'name of the VXLAN overlay device', default: 'membrane_vxlan' },
  { key: 'logLevel', flags: '--log-level <level>', env: 'MEMBRANE_LOG_LEVEL', help: 'trace|debug|info|warn|error', default: DEFAULTS.logLevel },
  { key: 'config', flags: '--config <file>', env: 'MEMBRANE_CONFIG', help: 'YAML or JSON file with the same keys in camelCase' },
];

function describe(o: OptionSpec): string {
  const extras = [o.default !== undefined ? `default ${o.default}` : '', o.env ? `env ${o.env}` : ''].filter(Boolean);
  return extras.length ? `${o.help} (${extras.join('; ')})` : o.help;
}

/** A fresh commander program over OPTIONS (commander keeps parse state, so one per parse). */
function program(): { cmd: Command; attr: Map<Key, string> } {
  const cmd = new Command('membrane-agent')
    .description('Membrane node agent: owns the node\'s networking state, programs the eBPF datapath, serves the API')
    .helpOption('-h, --help', 'show this help')
    .allowExcessArguments(false)
    .exitOverride()
    .configureOutput({ writeOut: () => undefined, writeErr: () => undefined })
    .addHelpText('after', '\nPrecedence: flags, then environment variables, then the --config file, then the defaults.');
  const attr = new Map<Key, string>();
  for (const o of OPTIONS) {
    const opt = new Option(o.flags, describe(o));
    if (o.key === 'pools') opt.argParser((v: string, prev: string[] = []) => [...prev, v]);
    cmd.addOption(opt);
    attr.set(o.key, opt.attributeName());
  }
  return { cmd, attr };
}

/** The generated --help text. */
export function helpText(): string {
  return program().cmd.helpInformation();
}

type Flags = Partial<Record<Exclude<Key, 'pools' | 'policyAuditMode'>, string>> & { pools: string[]; policyAuditMode?: boolean; help?: boolean };

export function parseFlags(argv: string[]): Flags {
  const { cmd, attr } = program();
  try {
    cmd.parse(argv, { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed') return { pools: [], help: true };
      throw new ConfigError(`${e.message.replace(/^error: /, '')} (see membrane-agent --help)`);
    }
    throw e;
  }
  const raw = cmd.opts() as Record<string, unknown>;
  const flags: Flags = { pools: (raw[attr.get('pools')!] as string[] | undefined) ?? [] };
  for (const o of OPTIONS) {
    const v = raw[attr.get(o.key)!];
    if (v === undefined || o.key === 'pools') continue;
    if (o.key === 'policyAuditMode') flags.policyAuditMode = v === true;
    else if (o.key === 'dockerPlugin') flags.dockerPlugin = v === true ? 'membrane' : String(v);
    else flags[o.key] = String(v);
  }
  return flags;
}

/** Turns --pool values into networks: "CIDR", "CIDR,CIDR6" or "NAME=CIDR[,CIDR6]". */
export function poolsToNetworks(pools: string[], mtu?: number): NetworkSpec[] {
  const byName = new Map<string, string[]>();
  for (const p of pools) {
    const eq = p.indexOf('=');
    const name = eq > 0 ? p.slice(0, eq) : 'default';
    const cidrs = (eq > 0 ? p.slice(eq + 1) : p).split(',').map((s) => s.trim()).filter(Boolean);
    if (!cidrs.length) throw new ConfigError(`--pool "${p}" names no CIDR`);
    for (const c of cidrs) {
      try { parseCidr(c); } catch (e) { throw new ConfigError(`--pool "${p}": ${(e as Error).message}`); }
    }
    byName.set(name, [...(byName.get(name) ?? []), ...cidrs]);
  }
  return [...byName].map(([name, subnets]) => ({ name, subnets, ...(mtu ? { mtu } : {}) }));
}

function readFileConfig(path: string, readFile: (p: string) => string): FileConfig {
  let text: string;
  try { text = readFile(path); } catch (e) { throw new ConfigError(`cannot read config file ${path}: ${(e as Error).message}`); }
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

  const envPools = envOf('pools')?.split(';').map((s) => s.trim()).filter(Boolean);
  const pools = flags.pools.length ? flags.pools : envPools?.length ? envPools : file.pools ?? [...DEFAULTS.pools];
  const mtu = int(text('mtu'), file.mtu, { min: 576, max: 65535 });
  const hostDevice = str('hostDevice') ?? file.hostDevice ?? DEFAULTS.hostDevice;
  const hostProblem = ifNameProblem(hostDevice);
  if (hostProblem) throw new ConfigError(`--host-device "${hostDevice}" is not a valid interface name: it ${hostProblem}`);
  const logLevel = str('logLevel') ?? file.logLevel ?? DEFAULTS.logLevel;
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) throw new ConfigError(`--log-level "${logLevel}" is not one of trace, debug, info, warn, error`);
  const ctMax = int(text('ctMax'), file.ctMax, { min: 1024, max: 1 << 24 }) ?? DEFAULTS.ctMax;
  const labelFilter = str('labelFilter') ?? file.labelFilter ?? DEFAULT_LABEL_FILTER;
  try { parseLabelFilter(labelFilter); } catch (e) { throw new ConfigError(`--label-filter: ${(e as Error).message}`); }
  // Docker API: --docker-socket (or DOCKER_SOCKET) wins, then DOCKER_HOST as every Docker client
  // reads it, then the config file's dockerSocket, then the default socket.
  const explicitSocket = str('dockerSocket');
  const dockerSocket = explicitSocket ?? file.dockerSocket;
  let dockerApi: DockerApiTarget;
  try {
    dockerApi = explicitSocket ? { socketPath: explicitSocket } : dockerApiTarget(undefined, { DOCKER_HOST: env.DOCKER_HOST || undefined });
    if (!explicitSocket && !env.DOCKER_HOST && file.dockerSocket) dockerApi = { socketPath: file.dockerSocket };
  } catch (e) {
    // Only an agent serving Docker reads it: a DOCKER_HOST meant for something else must not stop others.
    if (str('dockerPlugin') ?? file.dockerPlugin) throw new ConfigError(`${(e as Error).message}`);
    dockerApi = dockerApiTarget(undefined, {});
  }
  const kvstore = str('kvstore') ?? file.kvstore;
  const cluster: ClusterFlags | undefined = kvstore ? {
    kvstore,
    clusterName: str('clusterName') ?? file.clusterName,
    kvstoreEndpoints: str('kvstoreEndpoints') ?? file.kvstoreEndpoints,
    kvstoreCa: str('kvstoreCa') ?? file.kvstoreCa, kvstoreCert: str('kvstoreCert') ?? file.kvstoreCert, kvstoreKey: str('kvstoreKey') ?? file.kvstoreKey,
    nodeIp: str('nodeIp') ?? file.nodeIp,
    leaseTtlSeconds: int(text('kvstoreLeaseTtl'), file.kvstoreLeaseTtl, { min: 2, max: 3600 }) ?? 15,
    explicitDefaultPool: (flags.pools.length > 0 || !!envPools?.length || !!file.pools) && poolsToNetworks(pools).some((n) => n.name === 'default'),
    ...routingFlags(text, file),
  } : undefined;
  if (!kvstore && (str('kvstoreEndpoints') || str('nodeIp') || flags.clusterName)) throw new ConfigError('--kvstore-endpoints, --cluster-name and --node-ip need --kvstore etcd');
  const routingGiven = (['routingMode', 'tunnel', 'tunnelPort', 'tunnelDevice'] as const).find((k) => text(k) || file[k] !== undefined);
  if (!kvstore && routingGiven) throw new ConfigError(`${OPTIONS.find((o) => o.key === routingGiven)!.flags.split(' ')[0]} is for cluster mode (--kvstore etcd)`);
  const auditEnv = envOf('policyAuditMode');
  const audit = flags.policyAuditMode ?? onOff(auditEnv === undefined ? undefined : { text: auditEnv, from: 'MEMBRANE_POLICY_AUDIT_MODE' }, file.policyAuditMode ?? false);
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
    labelTimeoutMs: (int(text('labelTimeoutSeconds'), file.labelTimeoutSeconds, { min: 1, max: 600 }) ?? DEFAULT_LABEL_TIMEOUT_MS / 1000) * 1000,
    mtu,
    metricsAddress: str('metricsAddress') ?? file.metricsAddress ?? DEFAULTS.metricsAddress,
    observerSocket: str('observerSocket') ?? file.observerSocket ?? DEFAULTS.observerSocket,
    observerAddress: str('observerAddress') ?? file.observerAddress,
    ...observerTls(str('observerTlsCertFile') ?? file.observerTlsCertFile, str('observerTlsKeyFile') ?? file.observerTlsKeyFile,
      str('observerTlsClientCaFiles') ?? file.observerTlsClientCaFiles, str('observerAddress') ?? file.observerAddress),
    flowBufferSize: int(text('flowBufferSize'), file.flowBufferSize, { min: 1 }) ?? DEFAULTS.flowBufferSize,
    flowEvents: onOff(text('flowEvents'), file.flowEvents ?? true),
    eventsPerSecond: int(text('eventsPerSecond'), file.eventsPerSecond, { min: 0 }) ?? DEFAULTS.eventsPerSecond,
    policyAuditMode: audit,
    conntrackGcIntervalSeconds: int(text('conntrackGcIntervalSeconds'), file.conntrackGcIntervalSeconds, { min: 1, max: 86_400 })
      ?? DEFAULTS.conntrackGcIntervalSeconds,
    endpointUpkeepIntervalSeconds: int(text('endpointUpkeepIntervalSeconds'), file.endpointUpkeepIntervalSeconds, { min: 1, max: 86_400 })
      ?? DEFAULTS.endpointUpkeepIntervalSeconds,
    ctMax,
    ctMaxPerEndpoint: int(text('ctMaxPerEndpoint'), file.ctMaxPerEndpoint, { min: 0, max: 1 << 24 }) ?? Math.floor(ctMax / 4),
    endpointReapDelayMs: int(text('endpointReapDelayMs'), file.endpointReapDelayMs, { min: 0, max: 600_000 }) ?? 0,
    l7Proxy: onOff(text('l7Proxy'), file.l7Proxy ?? true),
    l7ProxyPort: int(text('l7ProxyPort'), file.l7ProxyPort, { min: 0, max: 65535 }) ?? 0,
    l7ProxyWorkers: int(text('l7ProxyWorkers'), file.l7ProxyWorkers, { min: 1, max: 64 }) ?? DEFAULTS.l7ProxyWorkers,
    dnsProxy: onOff(text('dnsProxy'), file.dnsProxy ?? true),
    dnsProxyPort: int(text('dnsProxyPort'), file.dnsProxyPort, { min: 0, max: 65535 }) ?? 0,
    fqdnMinTtl: int(text('fqdnMinTtl'), file.fqdnMinTtl, { min: 0, max: 86_400 * 7 }) ?? 0,
    ...(cluster ? { cluster } : {}),
  };
}

function observerTls(certFile?: string, keyFile?: string, clientCaFile?: string, address?: string): Pick<AgentConfig, 'observerTls'> {
  if (!certFile && !keyFile && !clientCaFile) return {};
  if (!certFile || !keyFile) throw new ConfigError('--observer-tls-cert-file and --observer-tls-key-file go together');
  if (!address) throw new ConfigError('--observer-tls-* secure the TCP listener: give --observer-address HOST:PORT too');
  return { observerTls: { certFile, keyFile, ...(clientCaFile ? { clientCaFile } : {}) } };
}

type TextOf = (key: 'routingMode' | 'tunnel' | 'tunnelPort' | 'tunnelDevice') => { text: string; from: string } | undefined;

/** --routing-mode, --tunnel (Cilium's older spelling: `--tunnel disabled` is native routing), --tunnel-port, --tunnel-device. */
function routingFlags(text: TextOf, file: FileConfig): Pick<ClusterFlags, 'routingMode' | 'tunnelPort' | 'tunnelDevice'> {
  const mode = text('routingMode');
  if (mode && mode.text !== 'tunnel' && mode.text !== 'native') throw new ConfigError(`${mode.from} "${mode.text}" is not tunnel or native`);
  const tunnel = text('tunnel');
  if (tunnel && tunnel.text !== 'vxlan' && tunnel.text !== 'disabled') throw new ConfigError(`${tunnel.from} "${tunnel.text}" is not vxlan or disabled (the overlay speaks VXLAN)`);
  const routingMode = (mode?.text ?? file.routingMode) as 'tunnel' | 'native' | undefined;
  const tunnelProto = tunnel?.text ?? file.tunnel;
  if (routingMode === 'tunnel' && tunnelProto === 'disabled') throw new ConfigError('--routing-mode tunnel needs a tunnel: drop --tunnel disabled (or use --routing-mode native)');
  if (routingMode === 'native' && tunnelProto === 'vxlan' && tunnel) throw new ConfigError('--routing-mode native uses no tunnel: drop --tunnel vxlan');
  const device = text('tunnelDevice')?.text ?? file.tunnelDevice ?? 'membrane_vxlan';
  const problem = ifNameProblem(device);
  if (problem) throw new ConfigError(`--tunnel-device "${device}" is not a valid interface name: it ${problem}`);
  return {
    routingMode: routingMode ?? (tunnelProto === 'disabled' ? 'native' : 'tunnel'),
    tunnelPort: int(text('tunnelPort'), file.tunnelPort, { min: 1, max: 65535 }) ?? 8472,
    tunnelDevice: device,
  };
}

function int(v: { text: string; from: string } | undefined, fallback: number | undefined, range: { min: number; max?: number }): number | undefined {
  if (v === undefined) return fallback;
  const n = Number(v.text);
  if (!/^\d+$/.test(v.text.trim()) || n < range.min || (range.max !== undefined && n > range.max)) {
    throw new ConfigError(`${v.from} "${v.text}" is not a whole number from ${range.min}${range.max !== undefined ? ` to ${range.max}` : ' up'}`);
  }
  return n;
}

function onOff(v: { text: string; from: string } | undefined, fallback: boolean): boolean {
  if (v === undefined) return fallback;
  if (['on', 'true', '1', 'yes'].includes(v.text)) return true;
  if (['off', 'false', '0', 'no'].includes(v.text)) return false;
  throw new ConfigError(`${v.from} "${v.text}" is not on or off`);
}
