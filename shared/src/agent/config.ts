// Agent configuration from flags, environment and an optional YAML/JSON file, in that precedence.
// Pure: the caller passes argv, env and a file reader, so every rule is unit-testable.
import os from 'node:os';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { parseCidr } from '../net/index.ts';
import type { NetworkSpec } from '../types.ts';

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
  mtu?: number;
  /** host:port for Prometheus metrics, or "off". */
  metricsAddress: string;
  /** gRPC observer (flows) on this unix socket; observerAddress adds a TCP listener. */
  observerSocket: string;
  observerAddress?: string;
  /** Flows kept in memory for GetFlows. */
  flowBufferSize: number;
  /** Flow and drop events from the datapath (off for benchmarking their cost). */
  flowEvents: boolean;
  /** Agent-wide policy audit mode: would-be drops are reported, traffic passes. */
  policyAuditMode: boolean;
}

export class ConfigError extends Error {
  constructor(message: string) { super(message); this.name = 'ConfigError'; }
}

const FileSchema = z.object({
  stateDir: z.string().min(1).optional(),
  bpffsDir: z.string().min(1).optional(),
  socket: z.string().min(1).optional(),
  hostDevice: z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/).optional(),
  pools: z.array(z.string()).optional(),
  logLevel: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).optional(),
  nodeName: z.string().min(1).optional(),
  bpfObject: z.string().optional(),
  dockerPlugin: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/).optional(),
  dockerPluginDir: z.string().optional(),
  dockerSocket: z.string().optional(),
  mtu: z.number().int().min(576).max(65535).optional(),
  metricsAddress: z.string().optional(),
  observerSocket: z.string().optional(),
  observerAddress: z.string().optional(),
  flowBufferSize: z.number().int().min(1).max(10_000_000).optional(),
  flowEvents: z.boolean().optional(),
  policyAuditMode: z.boolean().optional(),
}).strict();

export type FileConfig = z.infer<typeof FileSchema>;

export const USAGE = `Usage: membrane-agent [options]
  --state-dir DIR        persistent state (default ${DEFAULTS.stateDir}; env MEMBRANE_STATE_DIR)
  --bpffs-dir DIR        pinned BPF maps and programs (default ${DEFAULTS.bpffsDir}; env MEMBRANE_BPFFS_DIR)
  --socket PATH          REST API unix socket, mode 0660 (default ${DEFAULTS.socket}; env MEMBRANE_SOCKET)
  --pool [NAME=]CIDR[,CIDR6]  a network's subnets, repeatable (default: default=${DEFAULTS.pools[0]}; env MEMBRANE_POOLS, ';'-separated)
  --host-device NAME     dummy device holding the gateways (default ${DEFAULTS.hostDevice}; env MEMBRANE_HOST_DEVICE)
  --mtu N                MTU of the networks given by --pool (default 1500)
  --node-name NAME       (default: the hostname)
  --bpf-object PATH      compiled datapath (default: dist/bpf/endpoint.o next to the executable)
  --docker-plugin [NAME] serve the Docker network/IPAM plugin NAME (default name: membrane)
  --docker-plugin-dir D  where dockerd looks for plugin sockets (default ${DEFAULTS.dockerPluginDir})
  --docker-socket PATH   Docker API socket for container labels (default /var/run/docker.sock)
  --metrics-address A    Prometheus metrics on host:port, or "off" (default ${DEFAULTS.metricsAddress})
  --observer-socket PATH gRPC flow observer socket (default ${DEFAULTS.observerSocket})
  --observer-address A   also serve the observer on TCP host:port
  --flow-buffer N        flows kept in memory (default ${DEFAULTS.flowBufferSize})
  --flow-events on|off   flow and drop events from the datapath (default on)
  --policy-audit-mode    report would-be policy drops, let traffic pass (all endpoints)
  --log-level LEVEL      trace|debug|info|warn|error (default info; env MEMBRANE_LOG_LEVEL)
  --config FILE          YAML or JSON file with the same keys in camelCase (env MEMBRANE_CONFIG)
  -h, --help             this text`;

type FlagKey = Exclude<keyof FileConfig, 'pools' | 'policyAuditMode'> | 'config';
type Flags = Partial<Record<FlagKey, string>> & { pools: string[]; help?: boolean; policyAuditMode?: boolean };

export function parseFlags(argv: string[]): Flags {
  const flags: Flags = { pools: [] };
  const names: Record<string, FlagKey> = {
    '--state-dir': 'stateDir', '--bpffs-dir': 'bpffsDir', '--socket': 'socket', '--host-device': 'hostDevice',
    '--log-level': 'logLevel', '--node-name': 'nodeName', '--bpf-object': 'bpfObject', '--config': 'config',
    '--docker-plugin-dir': 'dockerPluginDir', '--docker-socket': 'dockerSocket', '--mtu': 'mtu',
    '--metrics-address': 'metricsAddress', '--observer-socket': 'observerSocket', '--observer-address': 'observerAddress',
    '--flow-buffer': 'flowBufferSize', '--flow-events': 'flowEvents',
  };
  for (let i = 0; i < argv.length; i++) {
    const raw = argv[i];
    const eq = raw.indexOf('=');
    const [flag, inline] = raw.startsWith('--') && eq > 0 ? [raw.slice(0, eq), raw.slice(eq + 1)] : [raw, undefined];
    const takeValue = (): string => {
      if (inline !== undefined) return inline;
      const v = argv[++i];
      if (v === undefined || v.startsWith('--')) throw new ConfigError(`${flag} needs a value`);
      return v;
    };
    if (flag === '-h' || flag === '--help') { flags.help = true; continue; }
    if (flag === '--pool') { flags.pools.push(takeValue()); continue; }
    if (flag === '--policy-audit-mode') { flags.policyAuditMode = true; continue; }
    if (flag === '--docker-plugin') {
      const next = argv[i + 1];
      flags.dockerPlugin = inline ?? (next && !next.startsWith('-') ? argv[++i] : 'membrane');
      continue;
    }
    const key = names[flag];
    if (!key) throw new ConfigError(`unknown option ${raw}\n${USAGE}`);
    flags[key] = takeValue();
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

export function resolveConfig(argv: string[], env: NodeJS.ProcessEnv, readFile: (p: string) => string): AgentConfig {
  const flags = parseFlags(argv);
  const configPath = flags.config ?? env.MEMBRANE_CONFIG;
  let file: FileConfig = {};
  if (configPath) {
    let text: string;
    try { text = readFile(configPath); } catch (e) { throw new ConfigError(`cannot read config file ${configPath}: ${(e as Error).message}`); }
    const parsed = FileSchema.safeParse(parseYaml(text) ?? {});
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new ConfigError(`config file ${configPath}: ${issue.path.join('.') || '(root)'}: ${issue.message}`);
    }
    file = parsed.data;
  }
  const envPools = env.MEMBRANE_POOLS?.split(';').map((s) => s.trim()).filter(Boolean);
  const pools = flags.pools.length ? flags.pools : envPools?.length ? envPools : file.pools ?? [...DEFAULTS.pools];
  const mtuText = flags.mtu ?? env.MEMBRANE_MTU;
  const mtu = mtuText !== undefined ? Number(mtuText) : file.mtu;
  if (mtu !== undefined && (!Number.isInteger(mtu) || mtu < 576 || mtu > 65535)) throw new ConfigError(`--mtu ${mtuText} is out of range (576-65535)`);
  const hostDevice = flags.hostDevice ?? env.MEMBRANE_HOST_DEVICE ?? file.hostDevice ?? DEFAULTS.hostDevice;
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(hostDevice)) throw new ConfigError(`--host-device "${hostDevice}" is not a valid interface name`);
  const logLevel = flags.logLevel ?? env.MEMBRANE_LOG_LEVEL ?? file.logLevel ?? DEFAULTS.logLevel;
  if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'].includes(logLevel)) throw new ConfigError(`--log-level "${logLevel}" is not one of trace, debug, info, warn, error`);
  return {
    stateDir: flags.stateDir ?? env.MEMBRANE_STATE_DIR ?? file.stateDir ?? DEFAULTS.stateDir,
    bpffsDir: flags.bpffsDir ?? env.MEMBRANE_BPFFS_DIR ?? file.bpffsDir ?? DEFAULTS.bpffsDir,
    socket: flags.socket ?? env.MEMBRANE_SOCKET ?? file.socket ?? DEFAULTS.socket,
    hostDevice,
    networks: poolsToNetworks(pools, mtu),
    logLevel,
    nodeName: flags.nodeName ?? env.MEMBRANE_NODE_NAME ?? file.nodeName ?? os.hostname(),
    bpfObject: flags.bpfObject ?? env.MEMBRANE_BPF_OBJECT ?? file.bpfObject,
    dockerPlugin: flags.dockerPlugin ?? env.MEMBRANE_DOCKER_PLUGIN ?? file.dockerPlugin,
    dockerPluginDir: flags.dockerPluginDir ?? file.dockerPluginDir ?? DEFAULTS.dockerPluginDir,
    dockerSocket: flags.dockerSocket ?? env.DOCKER_SOCKET ?? file.dockerSocket,
    mtu,
    metricsAddress: flags.metricsAddress ?? env.MEMBRANE_METRICS_ADDRESS ?? file.metricsAddress ?? DEFAULTS.metricsAddress,
    observerSocket: flags.observerSocket ?? env.MEMBRANE_OBSERVER_SOCKET ?? file.observerSocket ?? DEFAULTS.observerSocket,
    observerAddress: flags.observerAddress ?? env.MEMBRANE_OBSERVER_ADDRESS ?? file.observerAddress,
    flowBufferSize: intOption('--flow-buffer', flags.flowBufferSize ?? env.MEMBRANE_FLOW_BUFFER, file.flowBufferSize ?? DEFAULTS.flowBufferSize),
    flowEvents: onOff('--flow-events', flags.flowEvents ?? env.MEMBRANE_FLOW_EVENTS, file.flowEvents ?? true),
    policyAuditMode: flags.policyAuditMode ?? (env.MEMBRANE_POLICY_AUDIT_MODE ? onOff('MEMBRANE_POLICY_AUDIT_MODE', env.MEMBRANE_POLICY_AUDIT_MODE, false) : file.policyAuditMode ?? false),
  };
}

function intOption(name: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new ConfigError(`${name} "${text}" is not a positive whole number`);
  return n;
}

function onOff(name: string, text: string | undefined, fallback: boolean): boolean {
  if (text === undefined) return fallback;
  if (['on', 'true', '1', 'yes'].includes(text)) return true;
  if (['off', 'false', '0', 'no'].includes(text)) return false;
  throw new ConfigError(`${name} "${text}" is not on or off`);
}
