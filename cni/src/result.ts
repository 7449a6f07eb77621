// CNI Result in every supported version: the Endpoint -> Result translation, parsing of a prevResult or
// delegated IPAM result of any version, and printing in the request's version (spec §5, libcni types).
import type { Endpoint } from '../../shared/src/types.ts';
import { cmpVersion } from './config.ts';
import { CniCode, CniError } from './errors.ts';

export interface Iface {
  name: string;
  mac?: string;
  mtu?: number;
  sandbox?: string;
  socketPath?: string;
  pciID?: string;
}
export interface IpConfig {
  address: string;
  gateway?: string;
  interface?: number;
}
export interface Route {
  dst: string;
  gw?: string;
  mtu?: number;
  advmss?: number;
  priority?: number;
  table?: number;
  scope?: number;
}
export interface Dns {
  nameservers?: string[];
  domain?: string;
  search?: string[];
  options?: string[];
}
/** Version-neutral result (the 1.1.0 shape without cniVersion). */
export interface Result {
  interfaces: Iface[];
  ips: IpConfig[];
  routes: Route[];
  dns?: Dns;
}

/** The attachment as the agent built it: host veth first, then the container interface. */
export function endpointToResult(ep: Endpoint, sandbox: string, dns?: Dns): Result {
  return {
    interfaces: [
      { name: ep.hostIfName, mac: ep.hostMac },
      { name: ep.ifName, mac: ep.mac, mtu: ep.mtu, sandbox },
    ],
    ips: ep.ips.map((ip) => ({ address: ip.address, gateway: ip.gateway, interface: 1 })),
    routes: ep.routes.map((r) => (r.gw ? { dst: r.dst, gw: r.gw } : { dst: r.dst })),
    ...(dns && hasDns(dns) ? { dns } : {}),
  };
}

/** A plugin earlier in the chain already created interfaces: keep them, append ours (indices shifted). */
export function appendResult(prev: Result | undefined, ours: Result): Result {
  if (!prev) return ours;
  const shift = prev.interfaces.length;
  return {
    interfaces: [...prev.interfaces, ...ours.interfaces],
    ips: [...prev.ips, ...ours.ips.map((ip) => (ip.interface === undefined ? ip : { ...ip, interface: ip.interface + shift }))],
    routes: [...prev.routes, ...ours.routes],
    ...((ours.dns ?? prev.dns) ? { dns: mergeDns(prev.dns, ours.dns) } : {}),
  };
}

/** Serialises a result in the shape of `version` (0.3.x/0.4.0 add ips[].version; 1.1.0 extras only in 1.1.0). */
export function formatResult(r: Result, version: string): Record<string, unknown> {
  const v11 = cmpVersion(version, '1.1.0') >= 0;
  const v1 = cmpVersion(version, '1.0.0') >= 0;
  const interfaces = r.interfaces.map((i) =>
    compact({
      name: i.name,
      mac: i.mac,
      sandbox: i.sandbox,
      ...(v11 ? { mtu: i.mtu, socketPath: i.socketPath, pciID: i.pciID } : {}),
    }),
  );
  const ips = r.ips.map((ip) =>
    compact({
      ...(v1 ? {} : { version: ip.address.includes(':') ? '6' : '4' }),
      address: ip.address,
      gateway: ip.gateway,
      interface: ip.interface,
    }),
  );
  const routes = r.routes.map((rt) => compact(v11 ? { ...rt } : { dst: rt.dst, gw: rt.gw }));
  return compact({ cniVersion: version, interfaces, ips, routes, dns: r.dns && hasDns(r.dns) ? r.dns : undefined });
}

/** Reads a result of any supported version (prevResult, a delegated IPAM plugin's output). */
export function parseResult(raw: unknown, what: string): Result {
  if (!raw || typeof raw !== 'object') throw new CniError(CniCode.DECODE, `${what} is not a JSON object`);
  const o = raw as Record<string, unknown>;
  if ('ip4' in o || 'ip6' in o) {
    throw new CniError(
      CniCode.INCOMPATIBLE_VERSION,
      `${what} uses the 0.1/0.2 result shape (ip4/ip6)`,
      'use cniVersion 0.3.0 or newer',
    );
  }
  const arr = (k: string): Record<string, unknown>[] => {
    const v = o[k];
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v)) throw new CniError(CniCode.DECODE, `${what}.${k} is not an array`);
    return v as Record<string, unknown>[];
  };
  const interfaces = arr('interfaces').map(
    (i, n) =>
      ({
        name: needString(i.name, `${what}.interfaces[${n}].name`),
        ...optional(i, ['mac', 'sandbox', 'socketPath', 'pciID', 'mtu']),
      }) as Iface,
  );
  const ips = arr('ips').map((ip, n) => {
    const address = needString(ip.address, `${what}.ips[${n}].address`);
    if (!address.includes('/')) throw new CniError(CniCode.DECODE, `${what}.ips[${n}].address ${address} is not in CIDR form`);
    return { address, ...optional(ip, ['gateway', 'interface']) } as IpConfig;
  });
  const routes = arr('routes').map(
    (rt, n) =>
      ({
        dst: needString(rt.dst, `${what}.routes[${n}].dst`),
        ...optional(rt, ['gw', 'mtu', 'advmss', 'priority', 'table', 'scope']),
      }) as Route,
  );
  const dns = o.dns && typeof o.dns === 'object' ? (o.dns as Dns) : undefined;
  return { interfaces, ips, routes, ...(dns && hasDns(dns) ? { dns } : {}) };
}

export function mergeDns(a: Dns | undefined, b: Dns | undefined): Dns {
  const uniq = (x?: string[], y?: string[]) => {
    const all = [...(x ?? []), ...(y ?? [])];
    return all.length ? [...new Set(all)] : undefined;
  };
  return compact({
    nameservers: uniq(a?.nameservers, b?.nameservers),
    domain: b?.domain ?? a?.domain,
    search: uniq(a?.search, b?.search),
    options: uniq(a?.options, b?.options),
  }) as Dns;
}

function hasDns(d: Dns): boolean {
  return Boolean(d.nameservers?.length || d.domain || d.search?.length || d.options?.length);
}

function needString(v: unknown, what: string): string {
  if (typeof v !== 'string' || !v) throw new CniError(CniCode.DECODE, `${what} is missing or not a string`);
  return v;
}

function optional(o: Record<string, unknown>, keys: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of keys) if (o[k] !== undefined && o[k] !== null && o[k] !== '') out[k] = o[k];
  return out;
}

function compact<T extends Record<string, unknown>>(o: T): T {
  for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k];
  return o;
}
