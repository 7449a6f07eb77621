// The endpoint table flows are enriched from: by endpoint id and by address (raw bytes, as the
// event carries them, so a lookup allocates nothing for IPv4). Rebuilt from the endpoint manager's
// list at start, then kept by endpoint: put on create and relabel, remove on delete. Pure.
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

/** IPv4 keys are the address as a signed 32-bit number (a small integer to V8 whatever the address:
 *  an unsigned one of 128.0.0.0 and up is a heap number, allocated per lookup), IPv6 keys the hex of
 *  its 16 bytes (as the event holds them). */
function v4Key(ip: string): number {
  return ipBytes(ip).readInt32BE(0);
}

function v4KeyRaw(buf: Buffer, o: number): number {
  return (buf[o] << 24) | (buf[o + 1] << 16) | (buf[o + 2] << 8) | buf[o + 3];
}

function v6Key(buf: Buffer, offset: number): string {
  return buf.toString('hex', offset, offset + 16);
}

export class EndpointTable {
  private byId = new Map<number, EndpointView>();
  private byV4 = new Map<number, EndpointView>();
  private byV6 = new Map<string, EndpointView>();
  /** The addresses each endpoint id was entered under (what remove() takes out again). */
  private addressesOf = new Map<number, string[]>();

  constructor(private readonly clusterName?: string) {}

  static from(endpoints: Endpoint[], clusterName?: string): EndpointTable {
    const t = new EndpointTable(clusterName);
    t.replace(endpoints);
    return t;
  }

  replace(endpoints: Endpoint[]): void {
    this.byId = new Map();
    this.byV4 = new Map();
    this.byV6 = new Map();
    this.addressesOf = new Map();
    for (const ep of endpoints) this.put(ep);
  }

  /** One endpoint added or changed (its labels, identity, container): the others are left as they
   *  are, so an ADD costs the same with 10 endpoints as with 1,000. */
  put(ep: Endpoint): void {
    this.remove(ep);
    const view: EndpointView = {
      id: ep.id,
      identity: ep.identity,
      labels: ep.labels,
      containerId: ep.containerId,
      hostIfName: ep.hostIfName,
    };
    Object.assign(view, podOf(ep));
    view.ref = sideRefOf(view, this.clusterName);
    const addresses = ep.ips.map((ip) => addressOnly(ip.address));
    this.byId.set(ep.id, view);
    this.addressesOf.set(ep.id, addresses);
    for (const addr of addresses) {
      if (familyOf(addr) === 4) this.byV4.set(v4Key(addr), view);
      else this.byV6.set(ipBytes(addr).toString('hex'), view);
    }
  }

  /** An endpoint gone; its addresses are dropped only while they still name it (a new endpoint may
   *  have been given one already). */
  remove(ep: { id: number }): void {
    const view = this.byId.get(ep.id);
    if (!view) return;
    this.byId.delete(ep.id);
    for (const addr of this.addressesOf.get(ep.id) ?? []) {
      if (familyOf(addr) === 4) {
        if (this.byV4.get(v4Key(addr)) === view) this.byV4.delete(v4Key(addr));
      } else {
        const k = ipBytes(addr).toString('hex');
        if (this.byV6.get(k) === view) this.byV6.delete(k);
      }
    }
    this.addressesOf.delete(ep.id);
  }

  byEndpointId(id: number): EndpointView | undefined {
    return this.byId.get(id);
  }

  /** Address bytes as in the event (IPv4 in the first 4 bytes). */
  byRaw(buf: Buffer, offset: number, family: number): EndpointView | undefined {
    if (family === 4) return this.byV4.get(v4KeyRaw(buf, offset));
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
