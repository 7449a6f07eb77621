// The one core both front doors (CNI through the agent API, Docker through the hosted plugin) drive.
// Interfaces only; the agent builds the implementation (shared/src/agent/agent.ts, services.ts).
import type { Endpoint, EndpointRequest, IpamPoolView, Network, NetworkSpec } from './types.ts';
import type { IpamOwner } from './ipam/owner.ts';

export interface NetworkService {
  create(spec: NetworkSpec): Promise<Network>;
  /** false when it did not exist. Refuses (network_in_use) while endpoints or allocations remain. */
  delete(name: string): Promise<boolean>;
  get(name: string): Network | undefined;
  list(): Network[];
}

/** Endpoints are named by (attachment, ifName): the attachment is the CNI container id, or the Docker
 *  endpoint id of an endpoint the Docker plugin created (types.ts, Endpoint). */
export interface EndpointService {
  /** Idempotent for an identical request (same attachment/ifName/netns): returns the existing endpoint. */
  create(req: EndpointRequest): Promise<Endpoint>;
  /** Idempotent: false when unknown; succeeds when the netns or the link is already gone. */
  delete(attachment: string, ifName: string): Promise<boolean>;
  get(attachment: string, ifName: string): Endpoint | undefined;
  /** All, or those of one container. */
  list(filter?: { containerId?: string }): Endpoint[];
  /** A caller's labels (api:/cni: source) replace the caller's earlier ones; labels the container
   *  runtime gave stay (labels/resolver.ts). */
  updateLabels(attachment: string, ifName: string, labels: Record<string, string>): Promise<Endpoint>;
}

export interface IpamService {
  /** Allocate from a network's pool for an owner. `ip` requests a specific address; family picks the
   *  subnet when the network is dual-stack. A repeated request of the same owner gets the same address. */
  allocate(
    network: string,
    owner: IpamOwner,
    opts?: { ip?: string; family?: 4 | 6 },
  ): Promise<{ ip: string; subnet: string; gateway: string }>;
  releaseOwner(owner: IpamOwner): Promise<number>;
  releaseIp(network: string, ip: string): Promise<boolean>;
  pools(): IpamPoolView[];
  /** Addresses in use outside every pool (a delegated IPAM's), with their owners. */
  external?(): { ip: string; owner: string }[];
}

export interface Core {
  readonly networks: NetworkService;
  readonly endpoints: EndpointService;
  readonly ipam: IpamService;
}

/** A policy rule as flows name it. */
export interface RuleInfo {
  /** Full name ("namespace/name" for namespaced policies). */
  policy: string;
  index: number;
  direction: 'ingress' | 'egress';
  action: 'allow' | 'deny';
  kind?: string;
  namespace?: string;
  revision?: number;
  /** Where the rule is in its document ("spec.ingressDeny[0]"). */
  path?: string;
  /** Hubble's policy match type (flows/codes.ts PolicyMatch). */
  matchType?: number;
}

/** Names the policy rule behind a datapath verdict (flows, trace), and lists the policies (agent events). */
export interface PolicyLookup {
  describeRule(ruleId: number): RuleInfo | undefined;
  policies?(): { name: string; namespace?: string; kind: string; revision: number; rules: number }[];
  revision?(): number;
}

/** Labels behind a numeric security identity. */
export interface IdentityLookup {
  labelsOf(identity: number): Record<string, string> | undefined;
}
