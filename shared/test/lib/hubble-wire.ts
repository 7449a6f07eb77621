// An independent Hubble observer client for compatibility tests: its messages are built here, field
// by field, from the field numbers Hubble publishes (cilium/cilium api/v1/flow/flow.proto and
// api/v1/observer/observer.proto), with protobufjs reflection objects. It shares nothing with
// Membrane's server code or .proto files, so a field Membrane puts on the wrong number, or an enum
// with the wrong value, shows up here. Enums decode as numbers on purpose.
import * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';

type FieldSpec = [name: string, id: number, type: string, rule?: 'repeated'];

function message(name: string, fields: FieldSpec[], oneofs: Record<string, string[]> = {}): protobuf.Type {
  const t = new protobuf.Type(name);
  for (const [n, id, type, rule] of fields) t.add(new protobuf.Field(n, id, type, rule));
  for (const [o, members] of Object.entries(oneofs)) t.add(new protobuf.OneOf(o, members));
  return t;
}

function enumOf(name: string, values: Record<string, number>): protobuf.Enum {
  return new protobuf.Enum(name, values);
}

const root = new protobuf.Root();
root.add(
  message('Timestamp', [
    ['seconds', 1, 'int64'],
    ['nanos', 2, 'int32'],
  ]),
);
root.add(message('BoolValue', [['value', 1, 'bool']]));
root.add(message('UInt32Value', [['value', 1, 'uint32']]));
root.add(message('FieldMask', [['paths', 1, 'string', 'repeated']]));
root.add(
  enumOf('Verdict', {
    VERDICT_UNKNOWN: 0,
    FORWARDED: 1,
    DROPPED: 2,
    ERROR: 3,
    AUDIT: 4,
    REDIRECTED: 5,
    TRACED: 6,
    TRANSLATED: 7,
  }),
);
root.add(enumOf('TrafficDirection', { TRAFFIC_DIRECTION_UNKNOWN: 0, INGRESS: 1, EGRESS: 2 }));
root.add(enumOf('IPVersion', { IP_NOT_USED: 0, IPv4: 1, IPv6: 2 }));
root.add(enumOf('FlowType', { UNKNOWN_TYPE: 0, L3_L4: 1, L7: 2, SOCK: 3 }));
// Only the values these tests look at; a decoder keeps other numbers as they are.
root.add(enumOf('DropReason', { DROP_REASON_UNKNOWN: 0, INVALID_SOURCE_IP: 132, POLICY_DENIED: 133, POLICY_DENY: 181 }));
root.add(enumOf('TraceObservationPoint', { UNKNOWN_POINT: 0, TO_ENDPOINT: 101, FROM_ENDPOINT: 5 }));
root.add(enumOf('TraceReason', { TRACE_REASON_UNKNOWN: 0, NEW: 1 }));
root.add(enumOf('LostEventSource', { UNKNOWN_LOST_EVENT_SOURCE: 0, PERF_EVENT_RING_BUFFER: 1, OBSERVER_EVENTS_QUEUE: 2 }));
root.add(enumOf('NodeState', { UNKNOWN_NODE_STATE: 0, NODE_CONNECTED: 1, NODE_UNAVAILABLE: 2 }));
root.add(
  message('TCPFlags', [
    ['FIN', 1, 'bool'],
    ['SYN', 2, 'bool'],
    ['RST', 3, 'bool'],
    ['PSH', 4, 'bool'],
    ['ACK', 5, 'bool'],
    ['URG', 6, 'bool'],
    ['ECE', 7, 'bool'],
    ['CWR', 8, 'bool'],
    ['NS', 9, 'bool'],
  ]),
);
root.add(
  message('TCP', [
    ['source_port', 1, 'uint32'],
    ['destination_port', 2, 'uint32'],
    ['flags', 3, 'TCPFlags'],
  ]),
);
root.add(
  message('UDP', [
    ['source_port', 1, 'uint32'],
    ['destination_port', 2, 'uint32'],
  ]),
);
root.add(
  message('ICMP', [
    ['type', 1, 'uint32'],
    ['code', 2, 'uint32'],
  ]),
);
root.add(
  message(
    'Layer4',
    [
      ['TCP', 1, 'TCP'],
      ['UDP', 2, 'UDP'],
      ['ICMPv4', 3, 'ICMP'],
      ['ICMPv6', 4, 'ICMP'],
      ['SCTP', 5, 'UDP'],
    ],
    { protocol: ['TCP', 'UDP', 'ICMPv4', 'ICMPv6', 'SCTP'] },
  ),
);
root.add(
  message('IP', [
    ['source', 1, 'string'],
    ['destination', 2, 'string'],
    ['ipVersion', 3, 'IPVersion'],
    ['encrypted', 4, 'bool'],
    ['source_xlated', 5, 'string'],
  ]),
);
root.add(
  message('Endpoint', [
    ['ID', 1, 'uint32'],
    ['identity', 2, 'uint32'],
    ['namespace', 3, 'string'],
    ['labels', 4, 'string', 'repeated'],
    ['pod_name', 5, 'string'],
    ['cluster_name', 7, 'string'],
  ]),
);
root.add(
  message('Policy', [
    ['name', 1, 'string'],
    ['namespace', 2, 'string'],
    ['labels', 3, 'string', 'repeated'],
    ['revision', 4, 'uint64'],
    ['kind', 5, 'string'],
  ]),
);
root.add(
  message('CiliumEventType', [
    ['type', 1, 'int32'],
    ['sub_type', 2, 'int32'],
  ]),
);
root.add(
  message('NetworkInterface', [
    ['index', 1, 'uint32'],
    ['name', 2, 'string'],
  ]),
);
root.add(
  message('Emitter', [
    ['name', 1, 'string'],
    ['version', 2, 'string'],
  ]),
);
root.add(
  message('Flow', [
    ['time', 1, 'Timestamp'],
    ['verdict', 2, 'Verdict'],
    ['drop_reason', 3, 'uint32'],
    ['IP', 5, 'IP'],
    ['l4', 6, 'Layer4'],
    ['source', 8, 'Endpoint'],
    ['destination', 9, 'Endpoint'],
    ['Type', 10, 'FlowType'],
    ['node_name', 11, 'string'],
    ['event_type', 19, 'CiliumEventType'],
    ['traffic_direction', 22, 'TrafficDirection'],
    ['policy_match_type', 23, 'uint32'],
    ['trace_observation_point', 24, 'TraceObservationPoint'],
    ['drop_reason_desc', 25, 'DropReason'],
    ['is_reply', 26, 'BoolValue'],
    ['interface', 28, 'NetworkInterface'],
    ['uuid', 34, 'string'],
    ['trace_reason', 36, 'TraceReason'],
    ['emitter', 41, 'Emitter'],
    ['Summary', 100000, 'string'],
    ['egress_allowed_by', 21001, 'Policy', 'repeated'],
    ['ingress_allowed_by', 21002, 'Policy', 'repeated'],
    ['egress_denied_by', 21004, 'Policy', 'repeated'],
    ['ingress_denied_by', 21005, 'Policy', 'repeated'],
  ]),
);
root.add(
  message('EventTypeFilter', [
    ['type', 1, 'int32'],
    ['match_sub_type', 2, 'bool'],
    ['sub_type', 3, 'int32'],
  ]),
);
root.add(
  message('FlowFilter', [
    ['source_ip', 1, 'string', 'repeated'],
    ['source_pod', 2, 'string', 'repeated'],
    ['destination_ip', 3, 'string', 'repeated'],
    ['destination_pod', 4, 'string', 'repeated'],
    ['verdict', 5, 'Verdict', 'repeated'],
    ['event_type', 6, 'EventTypeFilter', 'repeated'],
    ['source_label', 10, 'string', 'repeated'],
    ['destination_label', 11, 'string', 'repeated'],
    ['protocol', 12, 'string', 'repeated'],
    ['source_port', 13, 'string', 'repeated'],
    ['destination_port', 14, 'string', 'repeated'],
    ['reply', 15, 'bool', 'repeated'],
    ['source_service', 16, 'string', 'repeated'],
    ['source_identity', 19, 'uint32', 'repeated'],
    ['destination_identity', 20, 'uint32', 'repeated'],
    ['tcp_flags', 23, 'TCPFlags', 'repeated'],
    ['node_name', 24, 'string', 'repeated'],
    ['ip_version', 25, 'IPVersion', 'repeated'],
    ['traffic_direction', 30, 'TrafficDirection', 'repeated'],
    ['drop_reason_desc', 33, 'DropReason', 'repeated'],
  ]),
);
root.add(
  message('LostEvent', [
    ['source', 1, 'LostEventSource'],
    ['num_events_lost', 2, 'uint64'],
  ]),
);
root.add(
  message('GetFlowsRequest', [
    ['number', 1, 'uint64'],
    ['follow', 3, 'bool'],
    ['blacklist', 5, 'FlowFilter', 'repeated'],
    ['whitelist', 6, 'FlowFilter', 'repeated'],
    ['since', 7, 'Timestamp'],
    ['until', 8, 'Timestamp'],
    ['first', 9, 'bool'],
    ['field_mask', 10, 'FieldMask'],
  ]),
);
root.add(
  message(
    'GetFlowsResponse',
    [
      ['flow', 1, 'Flow'],
      ['lost_events', 3, 'LostEvent'],
      ['node_name', 1000, 'string'],
      ['time', 1001, 'Timestamp'],
    ],
    { response_types: ['flow', 'lost_events'] },
  ),
);
root.add(message('Empty', []));
root.add(
  message('ServerStatusResponse', [
    ['num_flows', 1, 'uint64'],
    ['max_flows', 2, 'uint64'],
    ['seen_flows', 3, 'uint64'],
    ['uptime_ns', 4, 'uint64'],
    ['num_connected_nodes', 5, 'UInt32Value'],
    ['num_unavailable_nodes', 6, 'UInt32Value'],
    ['unavailable_nodes', 7, 'string', 'repeated'],
    ['version', 8, 'string'],
    ['flows_rate', 9, 'double'],
  ]),
);
root.add(
  message('TLS', [
    ['enabled', 1, 'bool'],
    ['server_name', 2, 'string'],
  ]),
);
root.add(
  message('Node', [
    ['name', 1, 'string'],
    ['version', 2, 'string'],
    ['address', 3, 'string'],
    ['state', 4, 'NodeState'],
    ['tls', 5, 'TLS'],
    ['uptime_ns', 6, 'uint64'],
    ['num_flows', 7, 'uint64'],
    ['max_flows', 8, 'uint64'],
    ['seen_flows', 9, 'uint64'],
  ]),
);
root.add(message('GetNodesResponse', [['nodes', 1, 'Node', 'repeated']]));
root.add(
  message('Namespace', [
    ['cluster', 1, 'string'],
    ['namespace', 2, 'string'],
  ]),
);
root.add(message('GetNamespacesResponse', [['namespaces', 1, 'Namespace', 'repeated']]));
root.add(message('HealthCheckRequest', [['service', 1, 'string']]));
root.add(message('HealthCheckResponse', [['status', 1, 'int32']]));
root.resolveAll();

export const hubbleTypes = root;

const CONVERT: protobuf.IConversionOptions = { longs: Number, enums: Number, defaults: false };

function method(
  path: string,
  req: string,
  res: string,
  responseStream: boolean,
): grpc.MethodDefinition<object, Record<string, unknown>> {
  const Req = root.lookupType(req),
    Res = root.lookupType(res);
  return {
    path,
    requestStream: false,
    responseStream,
    requestSerialize: (v: object) => Buffer.from(Req.encode(Req.fromObject(v)).finish()),
    requestDeserialize: (b: Buffer) => Req.toObject(Req.decode(b), CONVERT),
    responseSerialize: (v: object) => Buffer.from(Res.encode(Res.fromObject(v)).finish()),
    responseDeserialize: (b: Buffer) => Res.toObject(Res.decode(b), CONVERT),
  };
}

const Observer = grpc.makeGenericClientConstructor(
  {
    GetFlows: method('/observer.Observer/GetFlows', 'GetFlowsRequest', 'GetFlowsResponse', true),
    ServerStatus: method('/observer.Observer/ServerStatus', 'Empty', 'ServerStatusResponse', false),
    GetNodes: method('/observer.Observer/GetNodes', 'Empty', 'GetNodesResponse', false),
    GetNamespaces: method('/observer.Observer/GetNamespaces', 'Empty', 'GetNamespacesResponse', false),
  },
  'Observer',
);
const Health = grpc.makeGenericClientConstructor(
  {
    Check: method('/grpc.health.v1.Health/Check', 'HealthCheckRequest', 'HealthCheckResponse', false),
  },
  'Health',
);

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** A Hubble client on "unix:/path" or "host:port"; answers are plain objects with proto field names. */
export class HubbleWireClient {
  private readonly obs: grpc.Client & Obj;
  private readonly health: grpc.Client & Obj;

  constructor(target: string) {
    this.obs = new Observer(target, grpc.credentials.createInsecure()) as grpc.Client & Obj;
    this.health = new Health(target, grpc.credentials.createInsecure()) as grpc.Client & Obj;
  }

  private unary(client: Obj, name: string, req: object): Promise<Obj> {
    return new Promise((resolve, reject) =>
      client[name](req, { deadline: Date.now() + 10_000 }, (e: Error | null, r: Obj) => (e ? reject(e) : resolve(r))),
    );
  }

  serverStatus(): Promise<Obj> {
    return this.unary(this.obs, 'ServerStatus', {});
  }
  getNodes(): Promise<Obj> {
    return this.unary(this.obs, 'GetNodes', {});
  }
  getNamespaces(): Promise<Obj> {
    return this.unary(this.obs, 'GetNamespaces', {});
  }
  healthCheck(service: string): Promise<Obj> {
    return this.unary(this.health, 'Check', { service });
  }

  /** Every response of a non-follow GetFlows. */
  getFlows(req: Obj): Promise<Obj[]> {
    return new Promise((resolve, reject) => {
      const out: Obj[] = [];
      const call = this.obs.GetFlows(req) as grpc.ClientReadableStream<Obj>;
      call.on('data', (d) => out.push(d));
      call.on('error', reject);
      call.on('end', () => resolve(out));
    });
  }

  close(): void {
    this.obs.close();
    this.health.close();
  }
}
