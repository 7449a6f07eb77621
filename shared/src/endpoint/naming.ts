// Names and addresses derived deterministically, so a retried or repeated call finds what an earlier
// one created (DEL after a crashed ADD, restore after an agent restart).
import crypto from 'node:crypto';
import type { IpamOwner } from '../ipam/owner.ts';

/** Host-side veth name: "mbr" + 11 hex of sha256(containerId/ifName) = 14 chars (< IFNAMSIZ). */
export function hostVethName(containerId: string, ifName: string): string {
  return 'mbr' + crypto.createHash('sha256').update(`${containerId}/${ifName}`).digest('hex').slice(0, 11);
}

export function endpointKey(containerId: string, ifName: string): string {
  return `${containerId}/${ifName}`;
}

/** IPAM owner of an endpoint's addresses (derived, so a DEL after a crashed ADD finds them). */
export function ipamOwner(containerId: string, ifName: string): IpamOwner {
  return { kind: 'endpoint', containerId, ifName };
}
