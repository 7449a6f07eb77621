// The Docker side of the mapping, persisted because dockerd never replays CreateNetwork/RequestPool:
// Docker network -> core network, Docker endpoint -> core endpoint (+ container once known), IPAM pools.
// One JSON document per object (FileStore: write-temp, fsync, rename); memory is the working copy and
// every save writes the newest value of its key, so concurrent handlers can never leave an older one.
import type { Store } from '../../shared/src/store/index.ts';

export interface NetworkRecord {
  networkId: string;
  /** Name of the core network ("docker-<12 hex>"). */
  coreName: string;
  subnets: { pool: string; gateway: string; family: 4 | 6 }[];
  mtu?: number;
  /** PoolIDs of our IPAM bound to this network (empty with Docker's built-in IPAM). */
  ipamPools: string[];
  createdAt: string;
}

export interface EndpointRecord {
  /** Also the core endpoint's attachment id (Endpoint.docker.endpointId). */
  endpointId: string;
  networkId: string;
  /** The core endpoint's interface name: the container end's temp name in the host netns. */
  ifName: string;
  addresses: string[];
  sandboxKey?: string;
  joined: boolean;
  createdAt: string;
}

export interface PoolRecord {
  poolId: string;
  addressSpace: string;
  pool: string;
  subPool: string;
  v6: boolean;
  options: Record<string, string>;
  gateway?: string;
  /** Aux addresses requested before the network existed; allocated in the core at CreateNetwork. */
  pendingAux: string[];
  /** Docker NetworkID once CreateNetwork bound the pool, and the core network it allocates from. */
  networkId?: string;
  coreName?: string;
  createdAt: string;
}

type Kind = 'networks' | 'endpoints' | 'pools';

export class DockerState {
  readonly networks = new Map<string, NetworkRecord>();
  readonly endpoints = new Map<string, EndpointRecord>();
  readonly pools = new Map<string, PoolRecord>();
  private readonly chains = new Map<string, Promise<void>>();

  private constructor(private readonly store: Store) {}

  static async open(store: Store): Promise<DockerState> {
    const s = new DockerState(store);
    for (const { value } of await store.list<NetworkRecord>('networks')) s.networks.set(value.networkId, value);
    for (const { value } of await store.list<EndpointRecord>('endpoints')) s.endpoints.set(value.endpointId, value);
    for (const { value } of await store.list<PoolRecord>('pools')) s.pools.set(value.poolId, value);
    return s;
  }

  setNetwork(r: NetworkRecord): Promise<void> {
    this.networks.set(r.networkId, r);
    return this.save('networks', r.networkId);
  }
  deleteNetwork(id: string): Promise<void> {
    this.networks.delete(id);
    return this.save('networks', id);
  }
  setEndpoint(r: EndpointRecord): Promise<void> {
    this.endpoints.set(r.endpointId, r);
    return this.save('endpoints', r.endpointId);
  }
  deleteEndpoint(id: string): Promise<void> {
    this.endpoints.delete(id);
    return this.save('endpoints', id);
  }
  setPool(r: PoolRecord): Promise<void> {
    this.pools.set(r.poolId, r);
    return this.save('pools', r.poolId);
  }
  deletePool(id: string): Promise<void> {
    this.pools.delete(id);
    return this.save('pools', id);
  }

  /** Waits for every pending write (close, tests). */
  async flush(): Promise<void> {
    await Promise.all([...this.chains.values()]);
  }

  private save(kind: Kind, id: string): Promise<void> {
    const key = `${kind}/${storeSegment(id)}`;
    const prev = this.chains.get(key) ?? Promise.resolve();
    const next = prev
      .catch(() => undefined)
      .then(async () => {
        const value = this.current(kind, id);
        if (value === undefined) await this.store.delete(key);
        else await this.store.put(key, value);
      });
    this.chains.set(key, next);
    void next
      .finally(() => {
        if (this.chains.get(key) === next) this.chains.delete(key);
      })
      .catch(() => undefined);
    return next;
  }

  private current(kind: Kind, id: string): unknown {
    if (kind === 'networks') return this.networks.get(id);
    if (kind === 'endpoints') return this.endpoints.get(id);
    return this.pools.get(id);
  }
}

/** Docker ids are hex; PoolIDs contain "/" and ":": base64url keeps any id a valid store segment. */
function storeSegment(id: string): string {
  return /^[0-9a-f]{1,128}$/.test(id) ? id : 'b64-' + Buffer.from(id).toString('base64url');
}
