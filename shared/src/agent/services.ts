// The Core the front doors drive, over the node's parts: networks come with their gateways on the host
// device, a network with endpoints cannot go, IPAM is the persistent one.
import type { IpamService, NetworkService } from '../core.ts';
import type { Network, NetworkSpec } from '../types.ts';
import type { EndpointManager } from '../endpoint/manager.ts';
import type { Ipam } from '../ipam/index.ts';
import type { Netlink } from '../netlink/index.ts';
import { type Networks, NetworkError } from '../network/index.ts';
import { enableForwarding, ensureGateways, removeGateways } from '../endpoint/host-device.ts';

/** A --pool network at start: created, or found identical in the state dir. */
export async function ensureConfiguredNetwork(networks: Networks, spec: NetworkSpec): Promise<void> {
  try {
    await networks.create(spec);
  } catch (e) {
    if (e instanceof NetworkError && e.code === 'network_exists') {
      throw new Error(`${e.message}; the state dir keeps it: give --pool the same subnets, or use another --state-dir`);
    }
    throw e;
  }
}

/** `dockerName`: a Docker network's name by its id (from the Docker API), shown with the network. */
export function networkService(
  networks: Networks,
  endpoints: EndpointManager,
  host: Netlink,
  hostDevice: string,
  dockerName: (networkId: string) => string | undefined = () => undefined,
): NetworkService {
  const named = (n: Network): Network => {
    const id = n.options['docker.network-id'];
    const name = id ? dockerName(id) : undefined;
    return name ? { ...n, dockerName: name } : n;
  };
  return {
    get: (name) => {
      const n = networks.get(name);
      return n && named(n);
    },
    list: () => networks.list().map(named),
    async create(spec) {
      const n = await networks.create(spec);
      ensureGateways(host, hostDevice, n);
      if (n.subnets.some((s) => s.family === 6)) enableForwarding(true);
      return n;
    },
    async delete(name) {
      const n = networks.get(name);
      if (!n) return false;
      const users = endpoints.list().filter((e) => e.network === name);
      if (users.length) {
        throw new NetworkError(
          'network_in_use',
          `network "${name}" still has ${users.length} endpoint(s), e.g. ${users[0].containerId}/${users[0].ifName}`,
        );
      }
      const deleted = await networks.delete(name);
      removeGateways(host, hostDevice, n);
      return deleted;
    },
  };
}

export function ipamService(ipam: Ipam): IpamService {
  return {
    allocate: (network, owner, opts) => ipam.allocate(network, owner, opts ?? {}),
    releaseOwner: (owner) => ipam.releaseOwner(owner),
    releaseIp: (network, ip) => ipam.releaseIp(network, ip),
    pools: () => ipam.view(),
    external: () => ipam.externalView(),
  };
}
