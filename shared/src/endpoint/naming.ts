// Names and addresses derived deterministically, so a retried or repeated call finds what an earlier
// one created (DEL after a crashed ADD, restore after an agent restart).
import crypto from 'node:crypto';
import type { IpamOwner } from '../ipam/owner.ts';
import type { Endpoint } from '../types.ts';

/** Host-side veth name: "mbr" + 11 hex of sha256(attachment id/ifName) = 14 chars (< IFNAMSIZ). */
export function hostVethName(attachment: string, ifName: string): string {
  return 'mbr' + crypto.createHash('sha256').update(`${attachment}/${ifName}`).digest('hex').slice(0, 11);
}

/** What names an endpoint's attachment: the CNI container id, or the Docker endpoint id. */
export function attachmentId(x: { containerId: string; docker?: { endpointId: string } }): string {
  return x.docker?.endpointId ?? x.containerId;
}

/** The endpoint's name: "<attachment id>/<ifName>". */
export function endpointKey(attachment: string, ifName: string): string {
  return `${attachment}/${ifName}`;
}

/** IPAM owner of an endpoint's addresses (derived, so a DEL after a crashed ADD finds them). */
export function ipamOwner(attachment: string, ifName: string): IpamOwner {
  return { kind: 'endpoint', attachment, ifName };
}

/** Docker endpoints stored before `docker` existed carry the Docker endpoint id in containerId (and
 *  metadata docker:endpoint-id): read them as they are written now. */
export function withDockerRef(ep: Endpoint): Endpoint {
  const endpointId = ep.metadata?.['docker:endpoint-id'];
  if (ep.docker || !endpointId || endpointId !== ep.containerId) return ep;
  const docker: Endpoint['docker'] = { endpointId, networkId: ep.metadata['docker:network-id'] ?? '' };
  const name = ep.labels['docker:container-name'];
  if (name) docker.containerName = name;
  return { ...ep, containerId: ep.labels['docker:container-id'] ?? '', docker };
}
