// Flow records and observer messages as they travel (shared/proto: Hubble's flow and observer
// packages plus Membrane's additions), in the shape @grpc/proto-loader gives them: lowerCamelCase
// fields (Hubble's capitalised names such as IP, TCP, ID, Type and Summary stay as written), enums
// by name, 64-bit numbers as JS numbers, unset fields absent. Pure types.

export type Verdict = 'VERDICT_UNKNOWN' | 'FORWARDED' | 'DROPPED' | 'ERROR' | 'AUDIT' | 'REDIRECTED' | 'TRACED' | 'TRANSLATED';
export type TrafficDirection = 'TRAFFIC_DIRECTION_UNKNOWN' | 'INGRESS' | 'EGRESS';
export type IpVersion = 'IP_NOT_USED' | 'IPv4' | 'IPv6';
export type FlowType = 'UNKNOWN_TYPE' | 'L3_L4' | 'L7' | 'SOCK';
export type LostEventSource =
  | 'UNKNOWN_LOST_EVENT_SOURCE'
  | 'PERF_EVENT_RING_BUFFER'
  | 'OBSERVER_EVENTS_QUEUE'
  | 'HUBBLE_RING_BUFFER';
export type MembraneEvent = 'MEMBRANE_EVENT_UNKNOWN' | 'FLOW_NEW' | 'FLOW_DROP' | 'FLOW_END';
/** A DropReason enum name (Hubble's full list is in flow.proto), or its number when it has none. */
export type DropReasonName = string;
export type TraceObservationPoint = string;
export type TraceReason = 'TRACE_REASON_UNKNOWN' | 'NEW' | 'ESTABLISHED' | 'REPLY' | 'RELATED';
export type NodeState = 'UNKNOWN_NODE_STATE' | 'NODE_CONNECTED' | 'NODE_UNAVAILABLE' | 'NODE_GONE' | 'NODE_ERROR';

export interface Timestamp {
  seconds: number;
  nanos: number;
}

export interface TcpFlags {
  FIN?: boolean;
  SYN?: boolean;
  RST?: boolean;
  PSH?: boolean;
  ACK?: boolean;
  URG?: boolean;
  ECE?: boolean;
  CWR?: boolean;
  NS?: boolean;
}

export interface Ports {
  sourcePort: number;
  destinationPort: number;
}

export interface Icmp {
  type?: number;
  code?: number;
  /** Membrane: the echo identifier (the datapath pairs echo request and reply by it). */
  membraneEchoId?: number;
}

export interface Layer4 {
  TCP?: Ports & { flags?: TcpFlags };
  UDP?: Ports;
  SCTP?: Ports;
  ICMPv4?: Icmp;
  ICMPv6?: Icmp;
}

export interface Workload {
  name: string;
  kind: string;
}

export interface FlowEndpoint {
  ID?: number;
  identity?: number;
  clusterName?: string;
  namespace?: string;
  /** "source:key=value", sorted. */
  labels?: string[];
  podName?: string;
  workloads?: Workload[];
}

export interface FlowPolicy {
  name: string;
  namespace?: string;
  labels?: string[];
  revision?: number;
  kind?: string;
  membraneRuleIndex?: number;
  membraneRuleId?: number;
  membraneRulePath?: string;
}

export interface HttpHeader {
  key: string;
  value: string;
}

export interface Layer7 {
  type?: 'UNKNOWN_L7_TYPE' | 'REQUEST' | 'RESPONSE' | 'SAMPLE';
  latencyNs?: number;
  http?: { code?: number; method?: string; url?: string; protocol?: string; headers?: HttpHeader[] };
  dns?: {
    query?: string;
    ips?: string[];
    ttl?: number;
    cnames?: string[];
    observationSource?: string;
    rcode?: number;
    qtypes?: string[];
    rrtypes?: string[];
  };
}

export interface MembraneFlow {
  event?: MembraneEvent;
  observedByEndpoint?: number;
  length?: number;
  counters?: { packets: number; bytes: number };
  datapathDropReason?: number;
  sourceContainerId?: string;
  destinationContainerId?: string;
}

export interface Flow {
  time: Timestamp;
  uuid?: string;
  emitter?: { name: string; version: string };
  verdict: Verdict;
  dropReason?: number;
  IP?: { source: string; destination: string; ipVersion: IpVersion; sourceXlated?: string; encrypted?: boolean };
  l4?: Layer4;
  source?: FlowEndpoint;
  destination?: FlowEndpoint;
  Type?: FlowType;
  nodeName?: string;
  nodeLabels?: string[];
  sourceNames?: string[];
  destinationNames?: string[];
  l7?: Layer7;
  eventType?: { type?: number; subType?: number };
  sourceService?: { name?: string; namespace?: string };
  destinationService?: { name?: string; namespace?: string };
  trafficDirection?: TrafficDirection;
  policyMatchType?: number;
  traceObservationPoint?: TraceObservationPoint;
  traceReason?: TraceReason;
  dropReasonDesc?: DropReasonName;
  /** Absent: unknown. An empty object is false (protobuf leaves a false value out). */
  isReply?: { value?: boolean };
  interface?: { index?: number; name?: string };
  Summary?: string;
  egressAllowedBy?: FlowPolicy[];
  ingressAllowedBy?: FlowPolicy[];
  egressDeniedBy?: FlowPolicy[];
  ingressDeniedBy?: FlowPolicy[];
  policyLog?: string[];
  membrane?: MembraneFlow;
}

export interface LostEvent {
  source: LostEventSource;
  numEventsLost: number;
  cpu?: { value: number };
  first?: Timestamp;
  last?: Timestamp;
}

export interface NodeStatusEvent {
  stateChange?: NodeState;
  nodeNames?: string[];
  message?: string;
}

export interface GetFlowsResponse {
  flow?: Flow;
  nodeStatus?: NodeStatusEvent;
  lostEvents?: LostEvent;
  nodeName: string;
  time: Timestamp;
}

export interface EventTypeFilter {
  type?: number;
  matchSubType?: boolean;
  subType?: number;
}

export interface MembraneFlowFilter {
  sourceEndpoint?: number[];
  destinationEndpoint?: number[];
  policyName?: string[];
  event?: MembraneEvent[];
}

/** Hubble's FlowFilter; fields Membrane cannot apply are still typed so they can be refused by name. */
export interface FlowFilter {
  uuid?: string[];
  sourceIp?: string[];
  sourceIpXlated?: string[];
  sourcePod?: string[];
  sourceFqdn?: string[];
  sourceLabel?: string[];
  sourceService?: string[];
  sourceWorkload?: Workload[];
  sourceClusterName?: string[];
  destinationIp?: string[];
  destinationPod?: string[];
  destinationFqdn?: string[];
  destinationLabel?: string[];
  destinationService?: string[];
  destinationWorkload?: Workload[];
  destinationClusterName?: string[];
  trafficDirection?: TrafficDirection[];
  verdict?: Verdict[];
  dropReasonDesc?: (DropReasonName | number)[];
  interface?: { index?: number; name?: string }[];
  eventType?: EventTypeFilter[];
  httpStatusCode?: string[];
  protocol?: string[];
  sourcePort?: string[];
  destinationPort?: string[];
  reply?: boolean[];
  dnsQuery?: string[];
  sourceIdentity?: number[];
  destinationIdentity?: number[];
  httpMethod?: string[];
  httpPath?: string[];
  httpUrl?: string[];
  httpHeader?: HttpHeader[];
  tcpFlags?: TcpFlags[];
  nodeName?: string[];
  nodeLabels?: string[];
  ipVersion?: IpVersion[];
  traceId?: string[];
  ipTraceId?: number[];
  encrypted?: boolean[];
  experimental?: { celExpression?: string[] };
  membrane?: MembraneFlowFilter;
}

export interface GetFlowsRequest {
  number?: number;
  first?: boolean;
  follow?: boolean;
  blacklist?: FlowFilter[];
  whitelist?: FlowFilter[];
  since?: Timestamp;
  until?: Timestamp;
  fieldMask?: { paths: string[] };
}

export interface ServerStatus {
  numFlows: number;
  maxFlows: number;
  seenFlows: number;
  uptimeNs: number;
  numConnectedNodes?: { value: number };
  numUnavailableNodes?: { value: number };
  unavailableNodes?: string[];
  version: string;
  flowsRate: number;
  membrane?: { nodeName?: string; lostEventsDatapath?: number; lostEventsAgent?: number; flowEventsEnabled?: boolean };
}

export interface ObserverNode {
  name: string;
  version?: string;
  address?: string;
  state?: NodeState;
  tls?: { enabled?: boolean; serverName?: string };
  uptimeNs?: number;
  numFlows?: number;
  maxFlows?: number;
  seenFlows?: number;
}

export interface Namespace {
  cluster?: string;
  namespace: string;
}

export type AgentEventType =
  | 'AGENT_EVENT_UNKNOWN'
  | 'AGENT_STARTED'
  | 'POLICY_UPDATED'
  | 'POLICY_DELETED'
  | 'ENDPOINT_REGENERATE_SUCCESS'
  | 'ENDPOINT_REGENERATE_FAILURE'
  | 'ENDPOINT_CREATED'
  | 'ENDPOINT_DELETED'
  | 'IPCACHE_UPSERTED'
  | 'IPCACHE_DELETED';

export interface AgentEvent {
  type: AgentEventType;
  unknown?: { type?: string; notification?: string };
  agentStart?: { time: Timestamp };
  policyUpdate?: { labels?: string[]; revision?: number; ruleCount?: number };
  endpointRegenerate?: { id?: number; labels?: string[]; error?: string };
  endpointUpdate?: { id?: number; labels?: string[]; error?: string; podName?: string; namespace?: string };
  ipcacheUpdate?: {
    cidr?: string;
    identity?: number;
    oldIdentity?: { value: number };
    hostIp?: string;
    namespace?: string;
    podName?: string;
  };
}

export interface GetAgentEventsRequest {
  number?: number;
  first?: boolean;
  follow?: boolean;
  since?: Timestamp;
  until?: Timestamp;
}

export interface GetAgentEventsResponse {
  agentEvent?: AgentEvent;
  nodeName: string;
  time: Timestamp;
}
