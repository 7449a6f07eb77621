// The endpoint table flows are enriched from: by endpoint id and by address (raw bytes, as the
// event carries them, so a lookup allocates nothing for IPv4). Rebuilt from the endpoint manager's
// list on every endpoint change (cheap: thousands at most). Pure.
import type { Endpoint } from '../types.ts';
import { canonicalIp } from './event.ts';
import { flowEndpointOf, type EndpointView } from './enrich.ts';

const POD_NAMESPACE = 'k8s:io.kubernetes.pod.namespace';
const POD_NAME = 'k8s:io.kubernetes.pod.name';

function v4Key(ip: string): number {
  return ip.split('.').reduce((n, o) => n * 256 + Number(o), 0);
}

function v6Key(buf: Buffer, offset: number): string {
  return buf.toString('hex', offset, offset + 16);
}

export class EndpointTable {
  private byId = new Map<number, EndpointView>();
  private byV4 = new Map<number, EndpointView>();
  private byV6 = new Map<string, EndpointView>();

  static from(endpoints: Endpoint[]): EndpointTable {
    const t = new EndpointTable();
    t.replace(endpoints);
    return t;
  }

  replace(endpoints: Endpoint[]): void {
    const byId = new Map<number, EndpointView>();
    const byV4 = new Map<number, EndpointView>();
    const byV6 = new Map<string, EndpointView>();
    for (const ep of endpoints) {
      const view: EndpointView = {
        id: ep.id, identity: ep.identity, labels: ep.labels, containerId: ep.containerId, hostIfName: ep.hostIfName,
      };
      const ns = ep.metadata?.[POD_NAMESPACE] ?? ep.labels?.[POD_NAMESPACE];
      const pod = ep.metadata?.[POD_NAME];
      if (ns) view.namespace = ns;
      if (pod) view.podName = pod;
      view.flowEndpoint = flowEndpointOf(view);
      byId.set(ep.id, view);
      for (const ip of ep.ips) {
        const addr = ip.address.split('/')[0];
        if (ip.family === 4 || !addr.includes(':')) byV4.set(v4Key(addr), view);
        else byV6.set(v6Hex(canonicalIp(addr)), view);
      }
    }
    this.byId = byId;
    this.byV4 = byV4;
    this.byV6 = byV6;
  }

  byEndpointId(id: number): EndpointView | undefined { return this.byId.get(id); }

  /** Address bytes as in the event (IPv4 in the first 4 bytes). */
  byRaw(buf: Buffer, offset: number, family: number): EndpointView | undefined {
    if (family === 4) return this.byV4.get(buf.readUInt32BE(offset));
    if (family === 6) return this.byV6.get(v6Key(buf, offset));
    return undefined;
  }

  byAddress(ip: string): EndpointView | undefined {
    return ip.includes(':') ? this.byV6.get(v6Hex(canonicalIp(ip))) : this.byV4.get(v4Key(ip));
  }

  get size(): number { return this.byId.size; }
}

function v6Hex(ip: string): string {
  const [head, tail] = ip.includes('::') ? ip.split('::') : [ip, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const words = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  return words.map((w) => w.padStart(4, '0')).join('');
}
