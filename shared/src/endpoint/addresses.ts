// An endpoint's addresses: allocated by the agent's IPAM, or handed in by an IPAM outside it (Docker's
// IPAM driver, a delegated CNI IPAM plugin such as host-local or static, an API caller). Either way an
// address belongs to one endpoint on the node and is recorded in IPAM under that endpoint before the
// endpoint exists: a second endpoint with a live endpoint's address would take over its route, its
// local_endpoints entry and its identity.
import type { EndpointIp, EndpointRequest, Network } from '../types.ts';
import type { Ipam, IpamOwner } from '../ipam/index.ts';
import { cidrContains, familyOf, hostPrefix, normalizeIp, parseCidr } from '../net/index.ts';
import { MembraneError } from '../errors.ts';
import { EndpointError } from './errors.ts';

/** Which endpoint (its key) uses each address on the node: live endpoints and creates in flight.
 *  Claimed synchronously, before a create's first await, so two creates never share an address. */
export class AddressBook {
  private readonly byIp = new Map<string, string>();

  holder(ip: string): string | undefined {
    return this.byIp.get(ip);
  }

  /** Claims every address for `key` or none (address_in_use naming the holder); returns the undo. */
  claim(key: string, ips: string[]): () => void {
    for (const ip of ips) {
      const holder = this.byIp.get(ip);
      if (holder !== undefined && holder !== key)
        throw new MembraneError('address_in_use', `address ${ip} is already used by endpoint ${holder} on this node`, {
          field: 'ips',
        });
    }
    const fresh = ips.filter((ip) => !this.byIp.has(ip));
    for (const ip of fresh) this.byIp.set(ip, key);
    return () => {
      for (const ip of fresh) if (this.byIp.get(ip) === key) this.byIp.delete(ip);
    };
  }

  release(key: string, ips: string[]): void {
    for (const ip of ips) if (this.byIp.get(ip) === key) this.byIp.delete(ip);
  }
}

export interface AssignDeps {
  ipam: Ipam;
  addresses: AddressBook;
}

/** The addresses a request asks for, checked and normalised ("10.1.0.5"). */
export function requestedAddresses(req: EndpointRequest): string[] {
  const out = (req.ips ?? []).map((ip, i) => {
    if (!familyOf(ip)) throw new EndpointError('bad_request', `ips: "${ip}" is not an IP address`, { field: `ips.${i}` });
    return normalizeIp(ip);
  });
  if (new Set(out).size !== out.length)
    throw new EndpointError('bad_request', `ips: ${out.join(', ')} names an address twice`, { field: 'ips' });
  return out;
}

/**
 * Assigns the endpoint's addresses and records them in IPAM under `owner`; every step it took is
 * pushed on `undo`. Agent IPAM: one address per subnet of the network (a requested one where given).
 * External: each address must be free on the node; inside a pool it is allocated there (so the
 * agent's IPAM never hands it out again), except a Docker endpoint's address that Docker's
 * RequestAddress already took from this network's pool (the hand-back); outside every pool only a
 * delegated IPAM's address is accepted (a Docker endpoint's must lie in its network).
 */
export async function assignAddresses(
  d: AssignDeps,
  key: string,
  owner: IpamOwner,
  req: EndpointRequest,
  network: Network,
  undo: (() => unknown)[],
): Promise<EndpointIp[]> {
  const requested = requestedAddresses(req);
  if (req.externalIpam) {
    if (!requested.length)
      throw new EndpointError('bad_request', 'externalIpam needs the allocated addresses in "ips"', { field: 'ips' });
    undo.push(d.addresses.claim(key, requested));
    undo.push(() => d.ipam.releaseOwner(owner));
    const out: EndpointIp[] = [];
    for (const ip of requested) {
      await recordExternal(d.ipam, owner, ip, network, req.docker !== undefined);
      out.push(externalIp(ip, network));
    }
    return out;
  }
  undo.push(() => d.ipam.releaseOwner(owner));
  const out: EndpointIp[] = [];
  for (const s of network.subnets) {
    const want = requested.find((ip) => familyOf(ip) === s.family);
    const a = await d.ipam.allocate(network.name, owner, want ? { ip: want } : { family: s.family });
    out.push({ address: hostPrefix(a.ip, s.family), gateway: a.gateway, family: s.family, subnet: a.subnet });
  }
  for (const ip of requested) {
    if (!out.some((o) => o.address.startsWith(ip + '/'))) {
      throw new EndpointError('bad_request', `requested address ${ip} has no matching subnet in network "${network.name}"`, {
        field: 'ips',
      });
    }
  }
  // IPAM keeps pool addresses unique; the book also knows addresses of external endpoints.
  undo.push(
    d.addresses.claim(
      key,
      out.map((o) => o.address.split('/')[0]),
    ),
  );
  return out;
}

async function recordExternal(ipam: Ipam, owner: IpamOwner, ip: string, network: Network, docker: boolean): Promise<void> {
  const pool = ipam.poolContaining(ip);
  if (!pool) {
    if (docker) {
      throw new MembraneError(
        'address_out_of_range',
        `address ${ip} is outside network "${network.name}" (${network.subnets.map((s) => s.cidr).join(', ')})`,
        { field: 'ips' },
      );
    }
    await ipam.reserveExternal(ip, owner);
    return;
  }
  if (docker && pool !== network.name) {
    throw new MembraneError(
      'address_out_of_range',
      `address ${ip} is outside network "${network.name}": it lies in network "${pool}"`,
      { field: 'ips' },
    );
  }
  const holder = ipam.ownerOf(pool, ip);
  if (docker && holder?.kind === 'docker-address' && holder.network === network.name) return; // Docker's RequestAddress holds it for this endpoint
  if (holder && !sameOwner(holder, owner)) {
    throw new MembraneError(
      'address_in_use',
      `address ${ip} is already in use on this node (network "${pool}", held by ${describeOwner(holder)})`,
      { field: 'ips' },
    );
  }
  await ipam.allocate(pool, owner, { ip });
}

function externalIp(ip: string, network: Network): EndpointIp {
  const fam = familyOf(ip)!;
  // The gateway is the network's; an address from a delegated range outside it still routes through it.
  const subnet =
    network.subnets.find((s) => cidrContains(parseCidr(s.cidr), ip)) ?? network.subnets.find((s) => s.family === fam);
  if (!subnet)
    throw new EndpointError('bad_request', `network "${network.name}" has no IPv${fam} subnet for ${ip}`, { field: 'ips' });
  return { address: hostPrefix(ip, fam), gateway: subnet.gateway, family: fam, subnet: subnet.cidr };
}

function sameOwner(a: IpamOwner, b: IpamOwner): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function describeOwner(o: IpamOwner): string {
  switch (o.kind) {
    case 'endpoint':
      return `endpoint ${o.attachment}/${o.ifName}`;
    case 'docker-address':
      return 'a Docker IPAM lease';
    case 'docker-aux':
      return 'a Docker --aux-address';
  }
}

/** Restore (also after an upgrade from a version that did not record external addresses): the
 *  endpoint's addresses are recorded under it. Returns what could not be (held by someone else). */
export async function ensureRecorded(
  d: AssignDeps,
  key: string,
  owner: IpamOwner,
  ips: string[],
  network: Network,
  docker: boolean,
): Promise<string[]> {
  const problems: string[] = [];
  try {
    d.addresses.claim(key, ips);
  } catch (e) {
    return [(e as Error).message];
  }
  for (const ip of ips) {
    const pool = d.ipam.poolContaining(ip);
    const holder = pool ? d.ipam.ownerOf(pool, ip) : d.ipam.externalOwnerOf(ip);
    if (holder && sameOwner(holder, owner)) continue;
    try {
      await recordExternal(d.ipam, owner, ip, network, docker);
    } catch (e) {
      problems.push((e as Error).message);
    }
  }
  return problems;
}
