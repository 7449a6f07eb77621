// Names and addresses derived deterministically, so a retried or repeated call finds what an earlier
// one created (DEL after a crashed ADD, restore after an agent restart).
import crypto from 'node:crypto';

/** Host-side veth name: "mbr" + 11 hex of sha256(containerId/ifName) = 14 chars (< IFNAMSIZ). */
export function hostVethName(containerId: string, ifName: string): string {
  return 'mbr' + crypto.createHash('sha256').update(`${containerId}/${ifName}`).digest('hex').slice(0, 11);
}

export function endpointKey(containerId: string, ifName: string): string {
  return `${containerId}/${ifName}`;
}

/** IPAM owner of an endpoint's addresses; the "ep:" prefix marks owners the endpoint manager reconciles. */
export function ipamOwner(containerId: string, ifName: string): string {
  return `ep:${endpointKey(containerId, ifName)}`;
}

export function parseIpamOwner(owner: string): { containerId: string; ifName: string } | null {
  if (!owner.startsWith('ep:')) return null;
  const rest = owner.slice(3);
  const i = rest.lastIndexOf('/');
  if (i <= 0) return null;
  return { containerId: rest.slice(0, i), ifName: rest.slice(i + 1) };
}
