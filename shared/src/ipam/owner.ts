// Who holds an address. Typed for the code, one string for the store (the key written next to each
// allocation; existing state keeps its meaning): an endpoint's addresses, an address Docker's IPAM
// driver handed out, or an --aux-address reservation of a Docker network. Pure.

export type IpamOwner =
  /** The endpoint manager's endpoint, by its attachment id (reconciled against endpoints after a restart). */
  | { kind: 'endpoint'; attachment: string; ifName: string }
  /** One RequestAddress of the Docker IPAM driver on a core network (`lease` tells requests apart). */
  | { kind: 'docker-address'; network: string; lease: string }
  /** The --aux-address reservations of a Docker network. */
  | { kind: 'docker-aux'; network: string };

/** The stored form. */
export function ownerKey(o: IpamOwner): string {
  switch (o.kind) {
    case 'endpoint':
      return `ep:${o.attachment}/${o.ifName}`;
    case 'docker-address':
      return `docker-ipam:${o.network}:${o.lease}`;
    case 'docker-aux':
      return `docker-aux:${o.network}`;
  }
}

/** The owner behind a stored key; null for a key this version never writes. */
export function parseOwnerKey(key: string): IpamOwner | null {
  if (key.startsWith('ep:')) {
    const rest = key.slice(3);
    const i = rest.lastIndexOf('/');
    return i > 0 ? { kind: 'endpoint', attachment: rest.slice(0, i), ifName: rest.slice(i + 1) } : null;
  }
  if (key.startsWith('docker-aux:')) return { kind: 'docker-aux', network: key.slice('docker-aux:'.length) };
  if (key.startsWith('docker-ipam:')) {
    const rest = key.slice('docker-ipam:'.length);
    const i = rest.lastIndexOf(':');
    return i > 0 ? { kind: 'docker-address', network: rest.slice(0, i), lease: rest.slice(i + 1) } : null;
  }
  return null;
}
