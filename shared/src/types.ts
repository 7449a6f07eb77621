// Shapes shared by the core, the agent API, the CLI and the front doors (CNI, Docker).
// Pure types only: importing this file never loads native code.
import type { ErrorKind } from './errors.ts';
import type { Family } from './net/ip.ts';

/** The Docker side of an endpoint the Docker plugin created: libnetwork names the endpoint itself and
 *  tells the plugin its container only later (the container id goes to Endpoint.containerId). */
export interface DockerEndpointRef {
  endpointId: string;
  networkId: string;
  /** Learnt from the Docker API after Join, with the container id. */
  containerName?: string;
}

export interface EndpointRequest {
  /** CNI_CONTAINERID. Empty for a Docker endpoint, which `docker.endpointId` names instead. */
  containerId: string;
  docker?: DockerEndpointRef;
  /** Path of the container's netns. Omitted: the container end stays in the host netns under `ifName`
   *  and the runtime moves and configures it (Docker's libnetwork model). */
  netns?: string;
  ifName: string;
  network?: string;
  labels?: Record<string, string>;
  metadata?: Record<string, string>;
  mac?: string;
  mtu?: number;
  /** Requested addresses ("10.1.0.5"), or addresses an external IPAM already allocated (externalIpam). */
  ips?: string[];
  externalIpam?: boolean;
}

export interface EndpointIp {
  /** As configured on the container interface, e.g. 10.1.0.5/32. */
  address: string;
  gateway: string;
  family: Family;
  /** The network's subnet the address came from, e.g. 10.1.0.0/16. */
  subnet: string;
}

export interface EndpointRoute {
  dst: string;
  gw?: string;
}

/**
 * An endpoint is named by its attachment: (attachment id, ifName), where the attachment id is the CNI
 * container id, or the Docker endpoint id for a Docker endpoint (see attachmentId in endpoint/naming.ts).
 */
export interface Endpoint {
  id: number;
  /** The container; '' for a Docker endpoint until the plugin learns which container joined it. */
  containerId: string;
  docker?: DockerEndpointRef;
  ifName: string;
  network: string;
  netns: string | null;
  hostIfName: string;
  hostIfIndex: number;
  hostMac: string;
  mac: string;
  mtu: number;
  ips: EndpointIp[];
  routes: EndpointRoute[];
  /** Every label with its source ("k8s:app", "container:app", "cni:tier"; labels/sources.ts). */
  labels: Record<string, string>;
  metadata: Record<string, string>;
  identity: number;
  /** Set while a container runtime still owes the endpoint's labels (labels/resolver.ts): the identity
   *  is init and the host link stays down until they arrive; `expired`: the timeout passed, the link
   *  is up, the identity still init. */
  labelsPending?: { source: 'docker' | 'cri'; since: string; expired?: boolean };
  externalIpam: boolean;
  createdAt: string;
  /** Only on an endpoint the agent could not restore (never stored): what is wrong, since when; or on
   *  one whose container side the restarted agent has not verified yet (`verifying`). */
  health?: EndpointHealth;
}

export interface EndpointHealth {
  state: 'unhealthy' | 'verifying';
  problems: string[];
  since: string;
}

export interface NetworkSpec {
  name: string;
  /** CIDRs, at most one IPv4 and one IPv6. */
  subnets: string[];
  /** Optional explicit gateways (one per family); default: first usable address of each subnet. */
  gateways?: string[];
  mtu?: number;
  options?: Record<string, string>;
}

export interface Network {
  name: string;
  /** A Docker network's own name (`docker network create NAME`), once the Docker API told it. */
  dockerName?: string;
  subnets: { cidr: string; gateway: string; family: Family }[];
  mtu: number;
  options: Record<string, string>;
  createdAt: string;
}

export interface IpamAllocation {
  ip: string;
  subnet: string;
  owner: string;
}

export interface IpamPoolView {
  name: string;
  subnets: { cidr: string; gateway: string; size: string; allocated: number }[];
  allocations: IpamAllocation[];
}

export interface AgentStatus {
  version: string;
  uptimeSeconds: number;
  endpoints: number;
  /** Endpoints the agent keeps but could not restore, with what is wrong (retried every 30 s). */
  unhealthyEndpoints?: { id: number; endpoint: string; problems: string[]; since: string }[];
  /** Endpoints whose container side the agent has not verified yet since it restarted (their host
   *  side and datapath are restored; the verification runs while the API serves). */
  verifyingEndpoints?: number;
  networks: number;
  stateDir: string;
  socket: string;
  /** `problems`: what is wrong with the host device or the pinned maps now (health/datapath.ts).
   *  `behindForeign`: our tcx hooks where another tool's program runs ahead of ours (bpf/tcx.ts). */
  datapath: {
    pinDir: string;
    attach: string;
    hostDevice: string;
    problems?: string[];
    behindForeign?: { device: string; ifindex: number; direction: 'ingress' | 'egress'; aheadProgramIds: number[] }[];
  };
  /** The state store; `problem`: writes refused or failing (a full state disk), absent when healthy. */
  store?: { problem?: string };
  nodeName: string;
  /** The gRPC flow observer (unix socket, TCP address when --observer-address is set). */
  observer: { socket: string; address?: string; flowBufferSize: number };
  /** Prometheus metrics address; null with --metrics-address off. */
  metrics: { address: string | null };
  /** Policy revision, counts and map usage. */
  policy: Record<string, unknown>;
  /** The L7 proxy: port, whether a policy needs it, workers (absent with --l7-proxy off). */
  l7?: Record<string, unknown>;
  /** The DNS proxy: port, running, name cache (absent with --dns-proxy off). */
  dns?: Record<string, unknown>;
  /** The agent process's memory now (bytes), and how often it gave memory back when idle (agent/idle-memory.ts)
   *  or found too little to give back. */
  memory?: {
    rssBytes: number;
    heapUsedBytes: number;
    heapTotalBytes: number;
    externalBytes: number;
    idleTrims: number;
    idleSkips: number;
  };
  /** Cluster mode only: cluster and node, the kvstore connection, counts (shared/src/cluster/mode.ts). */
  cluster?: ClusterStatusView;
}

/** What `membrane status` shows of cluster mode (filled by ClusterMode.status()). */
export interface ClusterStatusView {
  name: string;
  node: string;
  nodeIp: string;
  podCidrs: { ipv4?: string; ipv6?: string };
  nodeId: number;
  kvstore: {
    type: string;
    endpoints: string[];
    connected: boolean;
    leaseId?: string;
    leaseTtlSeconds: number;
    revision: number;
    version?: string;
    lastContactMs?: number;
    pendingWrites: number;
    lastError?: string;
    watches: { prefix: string; live: boolean; revision: number }[];
  };
  nodes: number;
  remoteEndpoints: number;
  /** Cut off from the store longer than --kvstore-max-stale: the remote endpoints are out of the datapath. */
  remoteEndpointsWithheld?: boolean;
  /** The last full resync of other nodes' endpoints: at start, from listing the cluster store to the
   *  engine's first sync done (local restore included); after a reconnect, relist to maps updated. */
  ipcacheResync?: { entries: number; ms: number };
  identitiesReferenced: number;
  /** How pods reach other nodes' pods (shared/src/routing/routing.ts RoutingStatus). */
  routing?: {
    mode: 'tunnel' | 'native';
    device?: { name: string; port: number; mtu: number; ifindex: number };
    underlay: { device: string; mtu: number };
    nodes: number;
    routes: number;
    tunnelEntries: number;
    unreachable: { node: string; cidr: string }[];
    lastError?: string;
  };
}

/** Every error answer of the agent API. `code` is a kind of shared/src/errors.ts. */
export interface ApiErrorBody {
  error: { code: ErrorKind; message: string; field?: string; details?: unknown };
}
