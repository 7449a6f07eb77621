// The endpoint table flows are enriched from: by endpoint id and by address (raw bytes, as the
// event carries them, so a lookup allocates nothing for IPv4). Rebuilt from the endpoint manager's
// list on every endpoint change (cheap: thousands at most). Pure.
import type { Endpoint } from '../types.ts';
import { addressOnly, familyOf, ipBytes } from '../net/index.ts';
import { sideRefOf, type EndpointView } from './enrich.ts';

const POD_NAMESPACE = 'k8s:io.kubernetes.pod.namespace';
const POD_NAME = 'k8s:io.kubernetes.pod.name';

/** The pod namespace and name of an endpoint, when it is a pod; a Docker container's name (without
 *  a namespace), so that flows name containers as `docker ps` does. */
export function podOf(ep: Endpoint): { namespace?: string; podName?: string } {
  const ns = ep.metadata?.[POD_NAMESPACE] ?? ep.labels?.[POD_NAMESPACE];
  const pod = ep.metadata?.[POD_NAME] ?? (ns ? undefined : ep.docker?.containerName);
  return { ...(ns ? { namespace: ns } : {}), ...(pod ? { podName: pod } : {}) };
}

/** IPv4 keys are the address as a number, IPv6 keys the hex of its 16 bytes (as the event holds them). */
function v4Key(ip: string): number {
  return ipBytes(ip).readUInt32BE(0);
}

function v6Key(buf: Buffer, offset: number): string {
  return buf.toString('hex', offset, offset + 16);
}

export class EndpointTable {
  private byId = new Map<number, EndpointView>();
  private byV4 = new Map<number, EndpointView>();
  private byV6 = new Map<string, EndpointView>();

  constructor(private readonly clusterName?: string) {}

  static from(endpoints: Endpoint[], clusterName?: string): EndpointTable {
    const t = new EndpointTable(clusterName);
    t.replace(endpoints);
    return t;
  }

  replace(endpoints: Endpoint[]): void {
    const byId = new Map<number, EndpointView>();
    const byV4 = new Map<number, EndpointView>();
    const byV6 = new Map<string, EndpointView>();
    for (const ep of endpoints) {
      const view: EndpointView = {
        id: ep.id,
        identity: ep.identity,
        labels: ep.labels,
        containerId: ep.containerId,
        hostIfName: ep.hostIfName,
      };
      Object.assign(view, podOf(ep));
      view.ref = sideRefOf(view, this.clusterName);
      byId.set(ep.id, view);
      for (const ip of ep.ips) {
        const addr = addressOnly(ip.address);
        if (familyOf(addr) === 4) byV4.set(v4Key(addr), view);
        else byV6.set(ipBytes(addr).toString('hex'), view);
      }
    }
    this.byId = byId;
    this.byV4 = byV4;
    this.byV6 = byV6;
  }

  byEndpointId(id: number): EndpointView | undefined {
    return this.byId.get(id);
  }

  /** Address bytes as in the event (IPv4 in the first 4 bytes). */
  byRaw(buf: Buffer, offset: number, family: number): EndpointView | undefined {
    if (family === 4) return this.byV4.get(buf.readUInt32BE(offset));
    if (family === 6) return this.byV6.get(v6Key(buf, offset));
    return undefined;
  }

  byAddress(ip: string): EndpointView | undefined {
    const family = familyOf(ip);
    if (family === 4) return this.byV4.get(v4Key(ip));
    return family === 6 ? this.byV6.get(ipBytes(ip).toString('hex')) : undefined;
  }

  get size(): number {
    return this.byId.size;
  }
}
