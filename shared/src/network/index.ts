// Named networks: subnets, gateways and MTU. Each network owns the IPAM pool of the same name.
import type { Network, NetworkSpec } from '../types.ts';
import type { Store } from '../store/index.ts';
import type { Ipam } from '../ipam/index.ts';
import {
  cidrsOverlap,
  defaultGateway,
  familyOf,
  formatCidr,
  isUsable,
  cidrContains,
  normalizeIp,
  parseCidr,
  type Cidr,
} from '../net/index.ts';
import { MembraneError } from '../errors.ts';

export const DEFAULT_MTU = 1500;
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export class NetworkError extends MembraneError<'bad_request' | 'network_exists' | 'network_not_found' | 'network_in_use'> {
  override readonly name = 'NetworkError';
}

/** Validates a spec into a Network (pure), checking overlap against the networks that exist. */
export function buildNetwork(spec: NetworkSpec, existing: Network[], now = new Date()): Network {
  if (!NAME.test(spec.name))
    throw new NetworkError('bad_request', `network name "${spec.name}" is invalid (letters, digits, . _ -, at most 63)`);
  if (!spec.subnets.length) throw new NetworkError('bad_request', `network "${spec.name}" needs at least one subnet`);
  const subnets: Network['subnets'] = [];
  for (const text of spec.subnets) {
    let c: Cidr;
    try {
      c = parseCidr(text);
    } catch (e) {
      throw new NetworkError('bad_request', `network "${spec.name}": ${(e as Error).message}`, { field: 'subnets' });
    }
    if (subnets.some((s) => s.family === c.family)) {
      throw new NetworkError('bad_request', `network "${spec.name}" has more than one IPv${c.family} subnet`);
    }
    const hostBits = c.bits - c.prefix;
    if (hostBits < 2)
      throw new NetworkError('bad_request', `subnet ${text} is too small: it needs room for a gateway and endpoints`);
    const gw = spec.gateways?.find((g) => familyOf(g) === c.family);
    let gateway = defaultGateway(c);
    if (gw !== undefined) {
      if (!cidrContains(c, gw))
        throw new NetworkError('bad_request', `gateway ${gw} is outside subnet ${formatCidr(c)}`, { field: 'gateways' });
      if (!isUsable(c, gw))
        throw new NetworkError('bad_request', `gateway ${gw} is the network or broadcast address of ${formatCidr(c)}`, {
          field: 'gateways',
        });
      gateway = normalizeIp(gw);
    }
    for (const other of existing) {
      for (const os of other.subnets) {
        if (cidrsOverlap(c, parseCidr(os.cidr))) {
          throw new NetworkError('bad_request', `subnet ${formatCidr(c)} overlaps ${os.cidr} of network "${other.name}"`);
        }
      }
    }
    subnets.push({ cidr: formatCidr(c), gateway, family: c.family });
  }
  for (const g of spec.gateways ?? []) {
    if (!subnets.some((s) => s.family === familyOf(g)))
      throw new NetworkError('bad_request', `gateway ${g} matches no subnet of network "${spec.name}"`);
  }
  const mtu = spec.mtu ?? DEFAULT_MTU;
  if (!Number.isInteger(mtu) || mtu < 576 || mtu > 65535)
    throw new NetworkError('bad_request', `mtu ${spec.mtu} is out of range (576-65535)`);
  return { name: spec.name, subnets, mtu, options: spec.options ?? {}, createdAt: now.toISOString() };
}

export class Networks {
  private readonly byName = new Map<string, Network>();

  private constructor(
    private readonly store: Store,
    private readonly ipam: Ipam,
  ) {}

  static async open(store: Store, ipam: Ipam): Promise<Networks> {
    const n = new Networks(store, ipam);
    for (const { value } of await store.list<Network>('networks')) n.byName.set(value.name, value);
    return n;
  }

  get(name: string): Network | undefined {
    return this.byName.get(name);
  }
  list(): Network[] {
    return [...this.byName.values()];
  }

  /** Creates a network; an identical existing one is returned as is (idempotent). */
  async create(spec: NetworkSpec): Promise<Network> {
    const existing = this.byName.get(spec.name);
    const others = this.list().filter((n) => n.name !== spec.name);
    const net = buildNetwork(spec, others);
    if (existing) {
      if (sameShape(existing, net)) return existing;
      const subnets = existing.subnets.map((s) => s.cidr).join(', ');
      // Same subnets, another MTU (e.g. cluster mode switched between tunnel and native routing): say so.
      const mtu =
        subnets === net.subnets.map((s) => s.cidr).join(', ') && existing.mtu !== net.mtu
          ? ` and MTU ${existing.mtu} (asked: ${net.mtu})`
          : '';
      throw new NetworkError('network_exists', `network "${spec.name}" already exists with subnets ${subnets}${mtu}`);
    }
    await this.ipam.ensurePool(net.name, net.subnets);
    await this.store.put(`networks/${net.name}`, net);
    this.byName.set(net.name, net);
    return net;
  }

  /** Refuses while endpoints (checked by the caller) or addresses are still in use. */
  async delete(name: string): Promise<boolean> {
    if (!this.byName.has(name)) return false;
    try {
      await this.ipam.deletePool(name);
    } catch (e) {
      throw new NetworkError('network_in_use', `network "${name}" is in use: ${(e as Error).message}`);
    }
    await this.store.delete(`networks/${name}`);
    this.byName.delete(name);
    return true;
  }
}

function sameShape(a: Network, b: Network): boolean {
  const key = (n: Network) => JSON.stringify([n.subnets.map((s) => [s.cidr, s.gateway]).sort(), n.mtu]);
  return key(a) === key(b);
}
