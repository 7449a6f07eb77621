// What the agent can be told: every setting once, with its flag, environment variable and help
// text (its config-file key, type and default live in config-schema.ts). config-flags.ts builds the
// command line from OPTIONS; config.ts resolves them into an AgentConfig.
import { TCP_CLIENT_LIMITS } from '../dns/tcp-clients.ts';
import { DEFAULT_CRI_SOCKET } from '../labels/cri.ts';
import { DEFAULT_LABEL_FILTER } from '../labels/filter.ts';
import { DEFAULT_LABEL_TIMEOUT_MS } from '../labels/resolver.ts';
import { DEFAULTS, type Key } from './config-schema.ts';

// Importers of the settings' schema through this module keep working.
export { DEFAULTS, type FileConfig, FileSchema, type Key, LOG_LEVELS } from './config-schema.ts';

/** One setting: its flag (commander syntax), environment variable, help text and default shown in --help. */
export interface OptionSpec {
  key: Key;
  flags: string;
  env?: string;
  help: string;
  default?: string;
}

export const OPTIONS: OptionSpec[] = [
  {
    key: 'stateDir',
    flags: '--state-dir <dir>',
    env: 'MEMBRANE_STATE_DIR',
    help: 'persistent state',
    default: DEFAULTS.stateDir,
  },
  {
    key: 'bpffsDir',
    flags: '--bpffs-dir <dir>',
    env: 'MEMBRANE_BPFFS_DIR',
    help: 'pinned BPF maps and programs',
    default: DEFAULTS.bpffsDir,
  },
  {
    key: 'socket',
    flags: '--socket <path>',
    env: 'MEMBRANE_SOCKET',
    help: 'REST API unix socket, mode 0660',
    default: DEFAULTS.socket,
  },
  {
    key: 'pools',
    flags: '--pool <[name=]cidr[,cidr6]>',
    env: 'MEMBRANE_POOLS',
    help: "a network's subnets, repeatable (env: ';'-separated)",
    default: `default=${DEFAULTS.pools[0]}`,
  },
  {
    key: 'hostDevice',
    flags: '--host-device <name>',
    env: 'MEMBRANE_HOST_DEVICE',
    help: "veth holding every network's gateway address",
    default: DEFAULTS.hostDevice,
  },
  { key: 'mtu', flags: '--mtu <n>', env: 'MEMBRANE_MTU', help: 'MTU of the networks given by --pool', default: '1500' },
  {
    key: 'nodeName',
    flags: '--node-name <name>',
    env: 'MEMBRANE_NODE_NAME',
    help: 'node name in flows and status',
    default: 'the hostname',
  },
  {
    key: 'bpfObject',
    flags: '--bpf-object <path>',
    env: 'MEMBRANE_BPF_OBJECT',
    help: 'compiled datapath',
    default: 'dist/bpf/endpoint.o next to the executable',
  },
  {
    key: 'dockerPlugin',
    flags: '--docker-plugin [name]',
    env: 'MEMBRANE_DOCKER_PLUGIN',
    help: 'serve the Docker network/IPAM plugin NAME (default name: membrane)',
  },
  {
    key: 'dockerPluginDir',
    flags: '--docker-plugin-dir <dir>',
    help: 'where dockerd looks for plugin sockets',
    default: DEFAULTS.dockerPluginDir,
  },
  {
    key: 'dockerSocket',
    flags: '--docker-socket <path>',
    env: 'DOCKER_SOCKET',
    help: 'Docker API socket for container labels (wins over DOCKER_HOST)',
    default: 'DOCKER_HOST, else /var/run/docker.sock',
  },
  {
    key: 'criSocket',
    flags: '--cri-socket <path>',
    env: 'MEMBRANE_CRI_SOCKET',
    help: "containerd's CRI socket, asked for the labels of kubelet's pods",
    default: DEFAULT_CRI_SOCKET,
  },
  {
    key: 'labelFilter',
    flags: '--label-filter <patterns>',
    env: 'MEMBRANE_LABEL_FILTER',
    help: 'labels that make up identities: [!][source:]regex patterns, first match decides, unmatched labels are kept',
    default: DEFAULT_LABEL_FILTER,
  },
  {
    key: 'labelTimeoutSeconds',
    flags: '--label-timeout <seconds>',
    env: 'MEMBRANE_LABEL_TIMEOUT',
    help: "how long a new endpoint waits (link down) for its runtime's labels before it goes on with identity init",
    default: String(DEFAULT_LABEL_TIMEOUT_MS / 1000),
  },
  {
    key: 'metricsAddress',
    flags: '--metrics-address <host:port>',
    env: 'MEMBRANE_METRICS_ADDRESS',
    help: 'Prometheus metrics, or "off"',
    default: DEFAULTS.metricsAddress,
  },
  {
    key: 'observerSocket',
    flags: '--observer-socket <path>',
    env: 'MEMBRANE_OBSERVER_SOCKET',
    help: 'gRPC flow observer socket',
    default: DEFAULTS.observerSocket,
  },
  {
    key: 'observerAddress',
    flags: '--observer-address <host:port>',
    env: 'MEMBRANE_OBSERVER_ADDRESS',
    help: 'also serve the observer on TCP',
  },
  {
    key: 'observerTlsCertFile',
    flags: '--observer-tls-cert-file <file>',
    env: 'MEMBRANE_OBSERVER_TLS_CERT_FILE',
    help: "TLS on the observer's TCP listener: this node's certificate (scripts/cluster-certs.sh)",
  },
  { key: 'observerTlsKeyFile', flags: '--observer-tls-key-file <file>', env: 'MEMBRANE_OBSERVER_TLS_KEY_FILE', help: 'its key' },
  {
    key: 'observerTlsClientCaFiles',
    flags: '--observer-tls-client-ca-files <file>',
    env: 'MEMBRANE_OBSERVER_TLS_CLIENT_CA_FILES',
    help: 'clients (the relay) must show a certificate this CA signed',
  },
  {
    key: 'flowBufferSize',
    flags: '--flow-buffer <n>',
    env: 'MEMBRANE_FLOW_BUFFER',
    help: 'flows kept in memory',
    default: String(DEFAULTS.flowBufferSize),
  },
  {
    key: 'flowEvents',
    flags: '--flow-events <on|off>',
    env: 'MEMBRANE_FLOW_EVENTS',
    help: 'flow and drop events from the datapath',
    default: 'on',
  },
  {
    key: 'eventsPerSecond',
    flags: '--events-per-second <n>',
    env: 'MEMBRANE_EVENTS_PER_SECOND',
    help: 'per-CPU limit of flow and drop events a second, 0 = none',
    default: String(DEFAULTS.eventsPerSecond),
  },
  {
    key: 'policyAuditMode',
    flags: '--policy-audit-mode',
    env: 'MEMBRANE_POLICY_AUDIT_MODE',
    help: 'report would-be policy drops, let traffic pass (all endpoints; env on|off)',
  },
  {
    key: 'conntrackGcIntervalSeconds',
    flags: '--conntrack-gc-interval <seconds>',
    env: 'MEMBRANE_CONNTRACK_GC_INTERVAL',
    help: 'how often expired conntrack entries are collected',
    default: String(DEFAULTS.conntrackGcIntervalSeconds),
  },
  {
    key: 'endpointUpkeepIntervalSeconds',
    flags: '--endpoint-upkeep-interval <seconds>',
    env: 'MEMBRANE_ENDPOINT_UPKEEP_INTERVAL',
    help: 'how often endpoints the agent could not restore are tried again, endpoints whose netns is gone removed, orphaned addresses released and DELs queued by membrane-cni drained',
    default: String(DEFAULTS.endpointUpkeepIntervalSeconds),
  },
  {
    key: 'ctMax',
    flags: '--ct-max <n>',
    env: 'MEMBRANE_CT_MAX',
    help: 'conntrack entries, preallocated (~200 B each); a full table refuses new flows, never evicts',
    default: String(DEFAULTS.ctMax),
  },
  {
    key: 'ctMaxPerEndpoint',
    flags: '--ct-max-per-endpoint <n>',
    env: 'MEMBRANE_CT_MAX_PER_ENDPOINT',
    help: 'conntrack entries one endpoint may own; beyond them its new flows are dropped; 0 = no limit',
    default: 'a quarter of --ct-max',
  },
  {
    key: 'endpointReapDelayMs',
    flags: '--endpoint-reap-delay <ms>',
    env: 'MEMBRANE_ENDPOINT_REAP_DELAY',
    help: "after a DEL (the endpoint's traffic is dropped at once), wait this long before removing its interface and flows",
    default: '0',
  },
  {
    key: 'l7Proxy',
    flags: '--l7-proxy <on|off>',
    env: 'MEMBRANE_L7_PROXY',
    help: 'the HTTP proxy that enforces toPorts[].rules.http (started when a policy needs it)',
    default: 'on',
  },
  {
    key: 'l7ProxyPort',
    flags: '--l7-proxy-port <port>',
    env: 'MEMBRANE_L7_PROXY_PORT',
    help: 'its port on 127.0.0.1/::1, 0 = pick one and keep it',
    default: '0',
  },
  {
    key: 'l7ProxyWorkers',
    flags: '--l7-proxy-workers <n>',
    env: 'MEMBRANE_L7_PROXY_WORKERS',
    help: 'proxy worker processes',
    default: `${DEFAULTS.l7ProxyWorkers} (one per two CPUs, 1-2)`,
  },
  {
    key: 'l7ProxyMaxConnsPerSource',
    flags: '--l7-proxy-max-conns-per-source <n>',
    env: 'MEMBRANE_L7_PROXY_MAX_CONNS_PER_SOURCE',
    help: "connections one pod (or outside address) may hold open at a proxy worker at once; past it new ones are reset (0 = a sixteenth of the worker's fd limit, at most 1024)",
    default: '0',
  },
  {
    key: 'dnsProxy',
    flags: '--dns-proxy <on|off>',
    env: 'MEMBRANE_DNS_PROXY',
    help: 'the DNS proxy that enforces toPorts[].rules.dns and teaches toFQDNs their addresses',
    default: 'on',
  },
  {
    key: 'dnsProxyPort',
    flags: '--dns-proxy-port <port>',
    env: 'MEMBRANE_DNS_PROXY_PORT',
    help: 'its port (UDP and TCP) on 127.0.0.1/::1, 0 = pick one and keep it',
    default: '0',
  },
  {
    key: 'dnsProxyWorkers',
    flags: '--dns-proxy-workers <n>',
    env: 'MEMBRANE_DNS_PROXY_WORKERS',
    help: "worker threads relaying its UDP (0 = on the agent's thread)",
    default: `${DEFAULTS.dnsProxyWorkers}`,
  },
  {
    key: 'dnsCache',
    flags: '--dns-cache <on|off>',
    env: 'MEMBRANE_DNS_CACHE',
    help: "the datapath answers a pod's repeated UDP DNS queries from the answers the proxy relayed, until their TTL",
    default: 'on',
  },
  {
    key: 'dnsProxyTcpMax',
    flags: '--dns-proxy-tcp-max <n>',
    env: 'MEMBRANE_DNS_PROXY_TCP_MAX',
    help: 'TCP connections to the DNS proxy open at once, all pods together; past it the least recently active one is closed',
    default: `${TCP_CLIENT_LIMITS.max}`,
  },
  {
    key: 'dnsProxyTcpMaxPerClient',
    flags: '--dns-proxy-tcp-max-per-client <n>',
    env: 'MEMBRANE_DNS_PROXY_TCP_MAX_PER_CLIENT',
    help: 'the same for one pod address (its own least recently active one is closed); at most --dns-proxy-tcp-max',
    default: `${TCP_CLIENT_LIMITS.perClient}`,
  },
  {
    key: 'dnsProxyTcpIdleTimeout',
    flags: '--dns-proxy-tcp-idle-timeout <seconds>',
    env: 'MEMBRANE_DNS_PROXY_TCP_IDLE_TIMEOUT',
    help: 'a TCP connection to the DNS proxy with no traffic either way for this long is closed',
    default: `${TCP_CLIENT_LIMITS.idleMs / 1000}`,
  },
  {
    key: 'fqdnMinTtl',
    flags: '--fqdn-min-ttl <seconds>',
    env: 'MEMBRANE_FQDN_MIN_TTL',
    help: 'addresses learned from DNS are kept at least this long (longer while connections use them)',
    default: "0 (the answer's TTL)",
  },
  {
    key: 'clusterName',
    flags: '--cluster-name <name>',
    env: 'MEMBRANE_CLUSTER_NAME',
    help: 'cluster mode: the cluster this node joins',
    default: 'default',
  },
  {
    key: 'kvstore',
    flags: '--kvstore <etcd>',
    env: 'MEMBRANE_KVSTORE',
    help: 'cluster mode: share identities, endpoints and policies through etcd',
  },
  {
    key: 'kvstoreEndpoints',
    flags: '--kvstore-endpoints <url,...>',
    env: 'MEMBRANE_KVSTORE_ENDPOINTS',
    help: 'etcd client URLs',
  },
  { key: 'kvstoreCa', flags: '--kvstore-ca <file>', help: 'CA bundle for https etcd endpoints' },
  { key: 'kvstoreCert', flags: '--kvstore-cert <file>', help: 'client certificate for etcd' },
  { key: 'kvstoreKey', flags: '--kvstore-key <file>', help: 'client key for etcd' },
  {
    key: 'kvstoreLeaseTtl',
    flags: '--kvstore-lease-ttl <seconds>',
    help: "this node's lease: a dead node leaves the cluster after this long",
    default: '15',
  },
  {
    key: 'kvstoreMaxStale',
    flags: '--kvstore-max-stale <seconds>',
    help: "native routing: cut off from the store this long, the other nodes' endpoints leave the datapath (their packets count as world) until it answers; 0 keeps them (default)",
    default: '0',
  },
  {
    key: 'nodeIp',
    flags: '--node-ip <addr>',
    env: 'MEMBRANE_NODE_IP',
    help: "cluster mode: the node's underlay address other nodes reach it at",
  },
  {
    key: 'routingMode',
    flags: '--routing-mode <tunnel|native>',
    env: 'MEMBRANE_ROUTING_MODE',
    help: "cluster mode: pods reach other nodes' pods through the VXLAN overlay (tunnel) or routes via the node addresses (native)",
    default: 'tunnel',
  },
  {
    key: 'tunnel',
    flags: '--tunnel <vxlan|disabled>',
    env: 'MEMBRANE_TUNNEL',
    help: 'cluster mode: the tunnel protocol; disabled = --routing-mode native',
    default: 'vxlan',
  },
  {
    key: 'tunnelPort',
    flags: '--tunnel-port <port>',
    env: 'MEMBRANE_TUNNEL_PORT',
    help: 'UDP port of the VXLAN overlay (the same on every node)',
    default: '8472',
  },
  {
    key: 'tunnelDevice',
    flags: '--tunnel-device <name>',
    env: 'MEMBRANE_TUNNEL_DEVICE',
    help: 'name of the VXLAN overlay device',
    default: 'membrane_vxlan',
  },
  {
    key: 'logLevel',
    flags: '--log-level <level>',
    env: 'MEMBRANE_LOG_LEVEL',
    help: 'trace|debug|info|warn|error',
    default: DEFAULTS.logLevel,
  },
  { key: 'config', flags: '--config <file>', env: 'MEMBRANE_CONFIG', help: 'YAML or JSON file with the same keys in camelCase' },
];
