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

/** Random unicast, locally administered MAC. */
export function randomMac(): string {
  const b = crypto.randomBytes(6);
  b[0] = (b[0] & 0xfe) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

export function normalizeMac(mac: string): string {
  const m = mac.toLowerCase().replace(/-/g, ':');
  if (!MAC.test(m)) throw new Error(`"${mac}" is not a MAC address (expected aa:bb:cc:dd:ee:ff)`);
  if (parseInt(m.slice(0, 2), 16) & 1) throw new Error(`MAC ${mac} is a multicast address`);
  return m;
}

const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;

export function validIfName(name: string): boolean {
  return IFNAME.test(name) && name !== '.' && name !== '..';
}
