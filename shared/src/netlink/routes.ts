// Routes: add (replace semantics, so repeating it is harmless), delete, list.

import { type Conn, cidrOrThrow, drainCache, invalid, withNlAddr } from './conn.ts';
import { NetlinkError } from './errors.ts';
import { addrBytes, lib, NLM_F_REPLACE, type Ptr } from './lib.ts';
import { AF_INET, AF_INET6, afOf, RT_SCOPE, scopeName, type ScopeName } from './parse.ts';
import { familyOf, formatIp, parseIfAddr, type Family, type IfAddr } from '../net/index.ts';

export const RT_TABLE_MAIN = 254;
export const RTPROT_STATIC = 4; // what `ip route add` uses; ours are told apart by it
const RT_TABLE_UNSPEC = 0;

export interface RouteSpec {
  /** CIDR or 'default'. */
  dst: string;
  /** Needed only for 'default' without a gateway (else inferred); default 4. */
  family?: Family;
  gateway?: string;
  /** Output interface; 0 = none (only sensible for delete). */
  index: number;
  /** Default on add: 'universe' with a gateway, else 'link'. Default on delete: match any. */
  scope?: ScopeName;
  /** Default on add: RTPROT_STATIC (4). Default on delete: match any. */
  protocol?: number;
  /** Default: main (254). */
  table?: number;
  /** rtm_type on add (default unicast): RTN_LOCAL makes matching destinations local deliveries. */
  type?: number;
  /** RTA_PREFSRC: the source address the node uses for traffic it sends along this route. */
  prefSrc?: string;
  /** RTAX_MTU metric (add only). */
  mtu?: number;
}

export const RTN_LOCAL = 2;
const RTAX_MTU = 2;

export interface Route extends RouteSpec {
  family: Family;
  scope: ScopeName;
  protocol: number;
  table: number;
  /** RTA_PRIORITY. */
  metric: number;
  /** rtm_type: 1 unicast, 2 local, 6 blackhole, 7 unreachable, ... */
  type: number;
}

export function routeObject(c: Conn, r: RouteSpec): string {
  const via = r.gateway ? ` via ${r.gateway}` : '';
  const dev = r.index ? ` ${c.dev(r.index)}` : '';
  const table = r.table !== undefined && r.table !== RT_TABLE_MAIN ? ` table ${r.table}` : '';
  return `${r.dst}${via}${dev}${table}`;
}

function resolve(op: string, object: string, r: RouteSpec): { dst: IfAddr; gw?: IfAddr; family: Family } {
  const gwFamily = r.gateway !== undefined ? familyOf(r.gateway) : undefined;
  if (gwFamily === null) throw invalid(op, object, `invalid gateway "${r.gateway}"`);
  let dst: IfAddr;
  if (r.dst === 'default') {
    const family = r.family ?? gwFamily ?? 4;
    dst = { ip: family === 4 ? '0.0.0.0' : '::', prefix: 0, family };
  } else {
    try {
      dst = parseIfAddr(r.dst);
    } catch (e) {
      throw invalid(op, object, (e as Error).message);
    }
  }
  if (r.family !== undefined && r.family !== dst.family) throw invalid(op, object, `dst is not IPv${r.family}`);
  if (gwFamily !== undefined && gwFamily !== dst.family) throw invalid(op, object, 'gateway and dst families differ');
  if (!Number.isInteger(r.index) || r.index < 0) throw invalid(op, object, `invalid ifindex ${r.index}`);
  if (r.scope !== undefined && !(r.scope in RT_SCOPE)) throw invalid(op, object, `invalid scope ${r.scope}`);
  const gw = r.gateway !== undefined ? parseIfAddr(r.gateway) : undefined;
  return { dst, gw, family: dst.family };
}

/** Build an rtnl_route for r, run fn, free it (the route owns its nexthop). */
function withRoute<T>(op: string, c: Conn, r: RouteSpec, forDelete: boolean, fn: (route: Ptr) => T): T {
  const l = lib();
  const object = () => routeObject(c, r);
  const { dst, gw, family } = resolve(op, `${r.dst}${r.gateway ? ` via ${r.gateway}` : ''} ifindex ${r.index}`, r);
  const route = l.rtnl_route_alloc() as Ptr | null;
  if (route === null) throw new Error('rtnl_route_alloc: out of memory');
  try {
    l.rtnl_route_set_family(route, afOf(family));
    withNlAddr(dst, (a) => {
      const rc = l.rtnl_route_set_dst(route, a) as number;
      if (rc < 0) throw c.error(op, object, rc);
    });
    l.rtnl_route_set_table(route, r.table ?? RT_TABLE_MAIN);
    // On delete, scope NOWHERE and protocol 0 are the kernel's wildcards.
    const scope = r.scope ?? (forDelete ? 'nowhere' : gw ? 'universe' : 'link');
    l.rtnl_route_set_scope(route, RT_SCOPE[scope]);
    l.rtnl_route_set_protocol(route, r.protocol ?? (forDelete ? 0 : RTPROT_STATIC));
    if (r.type !== undefined) l.rtnl_route_set_type(route, r.type);
    if (r.prefSrc !== undefined) {
      const src = cidrOrThrow(op, object(), r.prefSrc);
      if (src.family !== family) throw invalid(op, object(), 'prefSrc and dst families differ');
      withNlAddr({ ...src, prefix: family === 4 ? 32 : 128 }, (a) => l.rtnl_route_set_pref_src(route, a)); // takes its own reference
    }
    if (r.mtu !== undefined && !forDelete) {
      if (!Number.isInteger(r.mtu) || r.mtu < 68 || r.mtu > 65535) throw invalid(op, object(), `invalid mtu ${r.mtu}`);
      l.rtnl_route_set_metric(route, RTAX_MTU, r.mtu);
    }
    if (r.index > 0 || gw) {
      const nh = l.rtnl_route_nh_alloc() as Ptr | null;
      if (nh === null) throw new Error('rtnl_route_nh_alloc: out of memory');
      try {
        if (r.index > 0) l.rtnl_route_nh_set_ifindex(nh, r.index);
        if (gw) withNlAddr(gw, (a) => l.rtnl_route_nh_set_gateway(nh, a)); // takes its own reference
      } catch (e) {
        l.rtnl_route_nh_free(nh);
        throw e;
      }
      l.rtnl_route_add_nexthop(route, nh); // ownership moves to the route
    }
    return fn(route);
  } finally {
    l.rtnl_route_put(route);
  }
}

/** NLM_F_CREATE|NLM_F_REPLACE: creates, or overwrites the route with the same dst/table/metric. */
export function routeAdd(c: Conn, r: RouteSpec): void {
  const l = lib();
  withRoute('route add', c, r, false, (route) =>
    c.exec(
      'route add',
      () => routeObject(c, r),
      (sk) => l.rtnl_route_add(sk, route, NLM_F_REPLACE),
    ),
  );
}

/** False when no such route (or its device is gone). */
export function routeDel(c: Conn, r: RouteSpec): boolean {
  const l = lib();
  try {
    withRoute('route del', c, r, true, (route) =>
      c.exec(
        'route del',
        () => routeObject(c, r),
        (sk) => l.rtnl_route_delete(sk, route, 0),
      ),
    );
    return true;
  } catch (e) {
    if (e instanceof NetlinkError && e.code === 'not_found') return false;
    throw e;
  }
}

function readRoute(p: Ptr): Route | undefined {
  const l = lib();
  const af = l.rtnl_route_get_family(p) as number;
  const family: Family | null = af === AF_INET ? 4 : af === AF_INET6 ? 6 : null;
  if (family === null) return undefined;
  const d = l.rtnl_route_get_dst(p) as Ptr | null;
  const prefix = d === null ? 0 : (l.nl_addr_get_prefixlen(d) as number);
  let dst = 'default';
  if (prefix > 0 && d !== null) {
    let bytes = addrBytes(d);
    if (bytes.length !== (family === 4 ? 4 : 16)) bytes = new Uint8Array(family === 4 ? 4 : 16); // 0/0 quirk
    dst = `${formatIp(bytes)}/${prefix}`;
  }
  const route: Route = {
    dst,
    family,
    index: 0,
    scope: scopeName(l.rtnl_route_get_scope(p)) as ScopeName,
    protocol: l.rtnl_route_get_protocol(p),
    table: l.rtnl_route_get_table(p),
    metric: l.rtnl_route_get_priority(p),
    type: l.rtnl_route_get_type(p),
  };
  const src = l.rtnl_route_get_pref_src(p) as Ptr | null;
  if (src !== null) {
    const sb = addrBytes(src);
    if (sb.length === 4 || sb.length === 16) route.prefSrc = formatIp(sb);
  }
  if ((l.rtnl_route_get_nnexthops(p) as number) > 0) {
    // Multipath routes report their first hop; we never create them.
    const nh = l.rtnl_route_nexthop_n(p, 0) as Ptr | null;
    if (nh !== null) {
      route.index = l.rtnl_route_nh_get_ifindex(nh);
      const g = l.rtnl_route_nh_get_gateway(nh) as Ptr | null;
      if (g !== null) {
        const gb = addrBytes(g);
        if (gb.length === 4 || gb.length === 16) route.gateway = formatIp(gb);
      }
    }
  }
  return route;
}

/** Routes of one table (default main; 0 = all tables), optionally one family / one output interface. */
export function routeList(c: Conn, o: { index?: number; family?: Family; table?: number } = {}): Route[] {
  const l = lib();
  const out: (Ptr | null)[] = [null];
  const af = o.family ? afOf(o.family) : 0;
  c.exec(
    'route list',
    () => (o.index ? c.dev(o.index) : 'all'),
    (sk) => l.rtnl_route_alloc_cache(sk, af, 0, out),
  );
  const table = o.table ?? RT_TABLE_MAIN;
  return drainCache(out[0] as Ptr, (p) => {
    const r = readRoute(p);
    if (!r) return undefined;
    if (table !== RT_TABLE_UNSPEC && r.table !== table) return undefined;
    if (o.index !== undefined && r.index !== o.index) return undefined;
    if (o.family !== undefined && r.family !== o.family) return undefined;
    return r;
  });
}
