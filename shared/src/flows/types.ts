// Flow records as the observer API carries them: the messages of shared/proto/observer.proto in the
// shape @grpc/proto-loader gives them (lowerCamelCase fields, enums as their names, uint64 as
// number, unset fields absent). Pure types.

export type Verdict = 'VERDICT_UNKNOWN' | 'FORWARDED' | 'DROPPED' | 'ERROR' | 'AUDIT' | 'REDIRECTED';
export type FlowEventType = 'EVENT_TYPE_UNKNOWN' | 'FLOW_NEW' | 'DROP' | 'FLOW_END';
export type DropReasonName =
  | 'DROP_REASON_UNKNOWN' | 'POLICY_DENIED' | 'INVALID_PACKET' | 'CT_MAP_FULL' | 'UNKNOWN_ENDPOINT' | 'SOURCE_SPOOFED';
export type TrafficDirection = 'TRAFFIC_DIRECTION_UNKNOWN' | 'INGRESS' | 'EGRESS';
export type IpVersion = 'IP_NOT_USED' | 'IPv4' | 'IPv6';
export type LostEventSource = 'UNKNOWN_LOST_EVENT_SOURCE' | 'DATAPATH_RING_BUFFER' | 'OBSERVER_EVENTS_QUEUE';

export interface Timestamp {
  seconds: number;
  nanos: number;
}

export interface TcpFlags {
  FIN?: boolean; SYN?: boolean; RST?: boolean; PSH?: boolean; ACK?: boolean; URG?: boolean; ECE?: boolean; CWR?: boolean;
}

export interface Ports {
  sourcePort: number;
  destinationPort: number;
}

export interface Icmp {
  type?: number;
  code?: number;
  /** Echo identifier (the datapath tracks echo request/reply by it). */
  id?: number;
}

export interface Layer4 {
  tcp?: Ports & { flags?: TcpFlags };
  udp?: Ports;
  sctp?: Ports;
  icmpv4?: Icmp;
  icmpv6?: Icmp;
  other?: { protocol: number };
}

export interface FlowEndpoint {
  id?: number;
  identity?: number;
  namespace?: string;
  /** "key=value", sorted. */
  labels?: string[];
  podName?: string;
  containerId?: string;
}

export interface FlowPolicy {
  name: string;
  namespace?: string;
  labels?: string[];
  revision?: number;
  kind?: string;
  ruleIndex?: number;
  ruleId?: number;
}

export interface Flow {
  time: Timestamp;
  verdict: Verdict;
  dropReason?: number;
  ip: { source: string; destination: string; ipVersion: IpVersion };
  l4: Layer4;
  source: FlowEndpoint;
  destination: FlowEndpoint;
  nodeName: string;
  eventType: FlowEventType;
  egressAllowedBy?: FlowPolicy[];
  ingressAllowedBy?: FlowPolicy[];
  egressDeniedBy?: FlowPolicy[];
  ingressDeniedBy?: FlowPolicy[];
  isReply?: { value: boolean };
  trafficDirection: TrafficDirection;
  dropReasonDesc?: DropReasonName;
  interface?: { index: number; name?: string };
  observedByEndpoint?: number;
  length?: number;
  counters?: { packets: number; bytes: number };
  audit?: boolean;
}

export interface LostEvent {
  source: LostEventSource;
  numEventsLost: number;
  cpu?: { value: number };
}

export interface GetFlowsResponse {
  flow?: Flow;
  lostEvents?: LostEvent;
  nodeName: string;
  time: Timestamp;
}

export interface FlowFilter {
  sourceIp?: string[];
  destinationIp?: string[];
  verdict?: Verdict[];
  eventType?: FlowEventType[];
  protocol?: string[];
  sourceLabel?: string[];
  destinationLabel?: string[];
  sourcePort?: string[];
  destinationPort?: string[];
  reply?: boolean[];
  sourceIdentity?: number[];
  destinationIdentity?: number[];
  nodeName?: string[];
  ipVersion?: IpVersion[];
  trafficDirection?: TrafficDirection[];
  dropReasonDesc?: DropReasonName[];
  sourceEndpoint?: number[];
  destinationEndpoint?: number[];
  sourcePod?: string[];
  destinationPod?: string[];
  policyName?: string[];
}

export interface GetFlowsRequest {
  number?: number;
  follow?: boolean;
  first?: boolean;
  whitelist?: FlowFilter[];
  blacklist?: FlowFilter[];
  since?: Timestamp;
  until?: Timestamp;
}

export interface ServerStatus {
  numFlows: number;
  maxFlows: number;
  seenFlows: number;
  uptimeNs: number;
  version: string;
  flowsRate: number;
  nodeName: string;
  lostEvents: number;
  lostEventsAgent: number;
  flowEventsEnabled: boolean;
}
