// What an agent setting may be: defaults and the config-file schema (every key once, validated by
// zod). config-options.ts says how each is given on the command line and in the environment.
import os from 'node:os';
import { z } from 'zod';
import { ifNameProblem } from '../net/index.ts';

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
   *  by bench:flows full-rate: a client and server on one CPU reach ~30-34k conn/s x 4 events =
   *  ~120-133k events/s on that CPU (100k lost a tenth of them), so 250k leaves ~2x headroom; 2 CPUs
   *  x 250k is what the agent ingests without loss (500k/s, bench:flows ingest). */
  eventsPerSecond: 250_000,
  /** Expired conntrack entries are collected this often. */
  conntrackGcIntervalSeconds: 15,
  /** Unhealthy endpoints are tried again, orphaned addresses released, queued CNI DELs drained, this often. */
  endpointUpkeepIntervalSeconds: 30,
  /** Conntrack entries (a preallocated hash, ~200 B each: 25 MiB). */
  ctMax: 131072,
  /** L7 proxy workers: one per two CPUs, at least one, at most two. The proxy shares the node with the
   *  pods it serves: on 2 vCPUs (bench:l7, wrk, server and proxy on the same two) one worker took 20-45 %
   *  less CPU per request than two, waited 2-10x less for a CPU, and served more requests/s in every
   *  column (docs/performance-history.md, L7 HTTP). Larger nodes are unmeasured: two there, as before. */
  l7ProxyWorkers: Math.max(1, Math.min(2, Math.floor((os.availableParallelism?.() ?? os.cpus().length) / 2))),
  /**
   * DNS proxy worker threads for UDP; 0 = on the agent's thread. Off by default: on a 2-vCPU node the
   * quiet bench:dns run measured no gain in queries/s from two workers (10.8k vs 11.5k q/s) and 35 %
   * more agent CPU per query (75 vs 55 us): the pods and the DNS server need the other core.
   */
  dnsProxyWorkers: 0,
} as const;

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
const IFNAME = z.string().refine((s) => !ifNameProblem(s), 'not a valid interface name');

export const FileSchema = z
  .object({
    stateDir: z.string().min(1).optional(),
    bpffsDir: z.string().min(1).optional(),
    socket: z.string().min(1).optional(),
    hostDevice: IFNAME.optional(),
    pools: z.array(z.string()).optional(),
    logLevel: z.enum(LOG_LEVELS).optional(),
    nodeName: z.string().min(1).optional(),
    bpfObject: z.string().optional(),
    dockerPlugin: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/)
      .optional(),
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
    ctMax: z
      .number()
      .int()
      .min(1024)
      .max(1 << 24)
      .optional(),
    ctMaxPerEndpoint: z
      .number()
      .int()
      .min(0)
      .max(1 << 24)
      .optional(),
    endpointReapDelayMs: z.number().int().min(0).max(600_000).optional(),
    l7Proxy: z.boolean().optional(),
    l7ProxyPort: z.number().int().min(0).max(65535).optional(),
    l7ProxyWorkers: z.number().int().min(1).max(64).optional(),
    l7ProxyMaxConnsPerSource: z.number().int().min(0).max(1_000_000).optional(),
    dnsProxy: z.boolean().optional(),
    dnsProxyPort: z.number().int().min(0).max(65535).optional(),
    dnsProxyWorkers: z.number().int().min(0).max(64).optional(),
    dnsCache: z.boolean().optional(),
    dnsProxyTcpMax: z.number().int().min(1).max(65_536).optional(),
    dnsProxyTcpMaxPerClient: z.number().int().min(1).max(65_536).optional(),
    dnsProxyTcpIdleTimeout: z.number().int().min(1).max(3600).optional(),
    fqdnMinTtl: z
      .number()
      .int()
      .min(0)
      .max(86_400 * 7)
      .optional(),
    clusterName: z.string().optional(),
    kvstore: z.string().optional(),
    kvstoreEndpoints: z.string().optional(),
    kvstoreCa: z.string().optional(),
    kvstoreCert: z.string().optional(),
    kvstoreKey: z.string().optional(),
    kvstoreLeaseTtl: z.number().int().min(2).max(3600).optional(),
    kvstoreMaxStale: z.number().int().min(0).max(86_400).optional(),
    nodeIp: z.string().optional(),
    routingMode: z.enum(['tunnel', 'native']).optional(),
    tunnel: z.enum(['vxlan', 'disabled']).optional(),
    tunnelPort: z.number().int().min(1).max(65535).optional(),
    tunnelDevice: IFNAME.optional(),
  })
  .strict();

export type FileConfig = z.infer<typeof FileSchema>;
export type Key = keyof FileConfig | 'config';
