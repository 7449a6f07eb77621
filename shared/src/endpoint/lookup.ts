// Finding an endpoint by any name a user sees. Pure.
//
// A reference is one of: the numeric endpoint id (flows, cilium-dbg); a container id, full or a
// unique prefix (Docker's, podman's, the CNI container id kubelet and ctr pass); the Docker endpoint
// id, full or prefix; a Docker container name; a pod as "namespace/name"; a ctr container's own id
// (ctr passes "<namespace>-<id>"); "container-id:ID" to be explicit. An exact match of any kind wins over prefixes; several endpoints of one container (two
// networks, two interfaces) are told apart by the interface name.
import type { Endpoint } from '../types.ts';

const POD_NAMESPACE = 'k8s:io.kubernetes.pod.namespace';
const POD_NAME = 'k8s:io.kubernetes.pod.name';

export type LookupResult =
  | { kind: 'found'; endpoint: Endpoint }
  | { kind: 'none' }
  | { kind: 'ambiguous'; candidates: Endpoint[] };

/** The names an endpoint answers to, exact. */
function exactNames(e: Endpoint): string[] {
  const out = [e.containerId, e.docker?.endpointId, e.docker?.containerName];
  const ns = e.metadata?.[POD_NAMESPACE],
    pod = e.metadata?.[POD_NAME];
  if (ns && pod) out.push(`${ns}/${pod}`);
  return out.filter((x): x is string => !!x);
}

/** Ids an endpoint answers to by prefix (container ids, Docker endpoint ids). */
function prefixIds(e: Endpoint): string[] {
  return [e.containerId, e.docker?.endpointId].filter((x): x is string => !!x);
}

/** Every endpoint the reference names (several when it is ambiguous). */
export function matchEndpoints(endpoints: Endpoint[], ref: string, ifName?: string): Endpoint[] {
  const r = ref.trim().replace(/^container-id:/, '');
  if (!r) return [];
  const pool = ifName ? endpoints.filter((e) => e.ifName === ifName) : endpoints;
  if (/^\d+$/.test(r)) {
    const byId = pool.filter((e) => e.id === Number(r));
    if (byId.length) return byId;
  }
  const exact = pool.filter((e) => exactNames(e).includes(r));
  if (exact.length) return exact;
  const prefixed = pool.filter((e) => prefixIds(e).some((id) => id.startsWith(r)));
  if (prefixed.length) return prefixed;
  // ctr passes CNI_CONTAINERID as "<namespace>-<id>": its own id names the container too.
  return pool.filter((e) => e.containerId.endsWith(`-${r}`));
}

export function findEndpoint(endpoints: Endpoint[], ref: string, ifName?: string): LookupResult {
  const m = matchEndpoints(endpoints, ref, ifName);
  if (m.length === 1) return { kind: 'found', endpoint: m[0] };
  return m.length ? { kind: 'ambiguous', candidates: m } : { kind: 'none' };
}

/** One line per candidate, for an error that lets the user pick: "12 (container 3f2a9c1e0b7d web, eth0, network blue)". */
export function describeCandidate(e: Endpoint): string {
  const container = e.containerId
    ? e.containerId.slice(0, 12)
    : e.docker
      ? `docker endpoint ${e.docker.endpointId.slice(0, 12)}`
      : '-';
  const name =
    e.docker?.containerName ?? (e.metadata?.[POD_NAME] ? `${e.metadata[POD_NAMESPACE] ?? ''}/${e.metadata[POD_NAME]}` : '');
  return `${e.id} (container ${container}${name ? ` ${name}` : ''}, ${e.ifName}, network ${e.network})`;
}
