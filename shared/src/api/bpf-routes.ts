// /v1/bpf: what the datapath's maps hold, for `membrane bpf ...` (cilium-dbg's bpf verbs). Reads go
// through the datapath's map accessors and codecs; the one write is a conntrack flush. Errors go to
// the API's one error handler (api/server.ts).
import express from 'express';
import * as bpf from '../bpf/libbpf.ts';
import type { Datapath } from '../bpf/datapath.ts';
import { MembraneError } from '../errors.ts';
import { dropReasonName, hubbleDropCode } from '../flows/codes.ts';
import type { Labels } from '../identity/labels.ts';
import * as conntrack from '../maps/conntrack.ts';
import { datapathOps } from '../policy/datapath-ops.ts';
import { decodePolicyKey, decodePolicyValue, POLICY_KEY_SIZE, POLICY_VALUE_SIZE } from '../policy/map-codec.ts';
import { TunnelMaps } from '../routing/maps.ts';
import type { Endpoint } from '../types.ts';

export interface BpfRouterDeps {
  datapath: Datapath;
  endpoints: () => Endpoint[];
  /** Labels behind an identity (policy entries name their peer). */
  labelsOf: (identity: number) => Labels | undefined;
  /** Cluster mode: the name of the node with this node id (tunnel entries name their node). */
  nodeNameOf?: (nodeId: number) => string | undefined;
}

/** One tunnel map entry as `membrane bpf tunnel list` shows it: a prefix and the node it is tunnelled to. */
export interface TunnelEntryView {
  prefix: string;
  /** The node's underlay address (the outer destination). */
  endpoint: string;
  nodeId: number;
  node?: string;
}

export interface TunnelView {
  /** The tunnel device's ifindex (0: the overlay is off: single node or native routing). */
  config: { tunnelIfindex: number; underlay: 4 | 6 };
  entries: TunnelEntryView[];
}

export function readTunnel(dp: Datapath, nodeNameOf?: (nodeId: number) => string | undefined): TunnelView {
  const maps = new TunnelMaps(dp);
  const entries = [...maps.read()].map(([prefix, t]): TunnelEntryView => {
    const node = nodeNameOf?.(t.nodeId);
    return { prefix, endpoint: t.ip, nodeId: t.nodeId, ...(node ? { node } : {}) };
  });
  return { config: maps.config(), entries: entries.sort((a, b) => a.prefix.localeCompare(b.prefix, 'en', { numeric: true })) };
}

/** One policy map entry as `membrane bpf policy get` shows it. */
export interface PolicyEntryView {
  endpoint: number;
  direction: 'ingress' | 'egress';
  /** 0: any peer. */
  identity: number;
  labels?: Labels;
  /** 0: any protocol. */
  proto: number;
  /** 0: any port (ICMP: 0x100 | type). */
  port: number;
  action: 'allow' | 'deny';
  ruleId: number;
  proxyPort?: number;
  packets: number;
  bytes: number;
}

export interface BpfMetricsView {
  drops: { code: number; reason: string; packets: number; bytes: number }[];
  endpoints: { endpoint: number; ifindex: number; rxPackets: number; rxBytes: number; txPackets: number; txBytes: number }[];
  eventsLost: number;
}

function endpointIdParam(q: unknown): number | undefined {
  if (q === undefined) return undefined;
  if (typeof q !== 'string' || !/^\d+$/.test(q))
    throw new MembraneError('bad_request', `endpoint "${String(q)}" is not an endpoint id`, { field: 'endpoint' });
  return Number(q);
}

export function readPolicyEntries(dp: Datapath, labelsOf: BpfRouterDeps['labelsOf'], endpoint?: number): PolicyEntryView[] {
  const { keys, values } = bpf.mapDumpBatch(dp.mapFd('policy'), 'policy', POLICY_KEY_SIZE, POLICY_VALUE_SIZE);
  const out: PolicyEntryView[] = [];
  keys.forEach((k, i) => {
    const key = decodePolicyKey(k);
    if (endpoint !== undefined && key.endpointId !== endpoint) return;
    const v = decodePolicyValue(values[i]);
    const labels = key.peer ? labelsOf(key.peer) : undefined;
    out.push({
      endpoint: key.endpointId,
      direction: key.direction,
      identity: key.peer,
      ...(labels ? { labels } : {}),
      proto: key.proto,
      port: key.dport,
      action: v.action,
      ruleId: v.ruleId,
      ...(v.proxyPort ? { proxyPort: v.proxyPort } : {}),
      packets: Number(v.packets),
      bytes: Number(v.bytes),
    });
  });
  return out.sort(
    (a, b) =>
      a.endpoint - b.endpoint ||
      a.direction.localeCompare(b.direction) ||
      a.identity - b.identity ||
      a.proto - b.proto ||
      a.port - b.port,
  );
}

export function readMetrics(dp: Datapath, endpoints: Endpoint[]): BpfMetricsView {
  const drops = Object.entries(dp.dropCounters())
    .map(([reason, c]) => ({
      code: hubbleDropCode(Number(reason)),
      reason: dropReasonName(Number(reason)),
      packets: Number(c.packets),
      bytes: Number(c.bytes),
    }))
    .sort((a, b) => a.code - b.code);
  const counters = endpoints
    .flatMap((ep) => {
      const c = dp.counters(ep.hostIfIndex);
      return c
        ? [
            {
              endpoint: ep.id,
              ifindex: ep.hostIfIndex,
              rxPackets: Number(c.rxPackets),
              rxBytes: Number(c.rxBytes),
              txPackets: Number(c.txPackets),
              txBytes: Number(c.txBytes),
            },
          ]
        : [];
    })
    .sort((a, b) => a.endpoint - b.endpoint);
  return { drops, endpoints: counters, eventsLost: Number(dp.eventsLost()) };
}

export function bpfRouter(d: BpfRouterDeps): express.Router {
  const r = express.Router();

  r.get('/ct', (_req, res) => {
    res.json({
      fill: d.datapath.conntrackFill(),
      entries: conntrack.list(d.datapath.mapFd('conntrack'), process.hrtime.bigint()),
    });
  });

  r.get('/ct/fill', (_req, res) => {
    res.json(d.datapath.conntrackFill());
  });

  r.post('/ct/flush', (_req, res) => {
    // Through the datapath's own flush (it keeps the per-endpoint entry counts right): every address
    // the table names. A flow created between the walk and the flush survives, as it would a moment later.
    const ips = new Set<string>();
    for (const e of conntrack.list(d.datapath.mapFd('conntrack'), process.hrtime.bigint())) {
      ips.add(e.saddr);
      ips.add(e.daddr);
    }
    res.json({ deleted: ips.size ? d.datapath.flushConntrack([...ips]) : 0 });
  });

  r.get('/policy', (req, res) => {
    const endpoint = endpointIdParam(req.query.endpoint);
    if (endpoint !== undefined && !d.endpoints().some((e) => e.id === endpoint)) {
      throw new MembraneError('endpoint_not_found', `no endpoint with id ${endpoint} on this node`, { field: 'endpoint' });
    }
    res.json({ entries: readPolicyEntries(d.datapath, d.labelsOf, endpoint) });
  });

  r.get('/ipcache', (_req, res) => {
    const entries = [...datapathOps(d.datapath).readIpcache()].map(([prefix, identity]) => ({ prefix, identity }));
    res.json({ entries: entries.sort((a, b) => a.prefix.localeCompare(b.prefix, 'en', { numeric: true })) });
  });

  r.get('/metrics', (_req, res) => {
    res.json(readMetrics(d.datapath, d.endpoints()));
  });

  r.get('/tunnel', (_req, res) => {
    res.json(readTunnel(d.datapath, d.nodeNameOf));
  });

  return r;
}
