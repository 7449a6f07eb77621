// A Core for unit tests: the real networks + IPAM logic on a memory store, and an endpoint service that
// records instead of touching the kernel (same validation and error codes as the endpoint manager).
import crypto from 'node:crypto';
import type { Core, EndpointService } from '../../shared/src/core.ts';
import type { Endpoint, EndpointRequest } from '../../shared/src/types.ts';
import { MemoryStore } from '../../shared/src/store/index.ts';
import { Ipam } from '../../shared/src/ipam/index.ts';
import { Networks, NetworkError } from '../../shared/src/network/index.ts';
import { cidrContains, familyOf, hostPrefix, normalizeIp, parseCidr } from '../../shared/src/net/index.ts';
import { EndpointError as FakeEndpointError } from '../../shared/src/endpoint/errors.ts';
import { attachmentId } from '../../shared/src/endpoint/naming.ts';

export interface FakeCore extends Core {
  calls: { op: string; args: unknown[] }[];
  /** Makes the next endpoints.create throw this. */
  failNextCreate?: Error;
}

export async function fakeCore(): Promise<FakeCore> {
  const store = new MemoryStore();
  const ipam = await Ipam.open(store);
  const networks = await Networks.open(store, ipam);
  const eps = new Map<string, Endpoint>();
  let nextId = 1;
  const calls: FakeCore['calls'] = [];
  const key = (c: string, i: string) => `${c}/${i}`;

  const endpoints: EndpointService = {
    get: (c, i) => eps.get(key(c, i)),
    list: (f) => [...eps.values()].filter((e) => !f?.containerId || e.containerId === f.containerId),
    async create(req: EndpointRequest) {
      calls.push({ op: 'endpoints.create', args: [req] });
      if (core.failNextCreate) {
        const e = core.failNextCreate;
        core.failNextCreate = undefined;
        throw e;
      }
      const id = attachmentId(req);
      const existing = eps.get(key(id, req.ifName));
      if (existing) {
        if (existing.netns === (req.netns ?? null)) return existing;
        throw new FakeEndpointError('endpoint_exists', `endpoint ${key(id, req.ifName)} already exists`);
      }
      if (req.ifName.length > 15) throw new FakeEndpointError('bad_request', `ifName "${req.ifName}" is too long`);
      const net = networks.get(req.network ?? 'default');
      if (!net) throw new FakeEndpointError('network_not_found', `network "${req.network}" does not exist`);
      if (!req.externalIpam) throw new Error('the docker plugin must always use externalIpam');
      const ips = (req.ips ?? []).map((ip) => {
        const fam = familyOf(ip)!;
        const s = net.subnets.find((x) => cidrContains(parseCidr(x.cidr), ip)) ?? net.subnets.find((x) => x.family === fam);
        if (!s) throw new FakeEndpointError('bad_request', `network "${net.name}" has no IPv${fam} subnet for ${ip}`);
        return { address: hostPrefix(normalizeIp(ip), fam), gateway: s.gateway, family: fam, subnet: s.cidr };
      });
      const ep: Endpoint = {
        id: nextId++,
        containerId: req.docker ? '' : req.containerId,
        ...(req.docker ? { docker: { ...req.docker } } : {}),
        ifName: req.ifName,
        network: net.name,
        netns: req.netns ?? null,
        hostIfName: 'mbr' + crypto.createHash('sha256').update(key(id, req.ifName)).digest('hex').slice(0, 11),
        hostIfIndex: 100 + nextId,
        hostMac: '02:00:00:00:00:01',
        mac: req.mac ?? '02:aa:bb:cc:dd:' + (nextId % 256).toString(16).padStart(2, '0'),
        mtu: req.mtu ?? net.mtu,
        ips,
        routes: [],
        labels: { ...(req.labels ?? {}) },
        metadata: { ...(req.metadata ?? {}) },
        identity: 0,
        externalIpam: true,
        createdAt: new Date().toISOString(),
      };
      eps.set(key(id, req.ifName), ep);
      return ep;
    },
    async delete(c, i) {
      calls.push({ op: 'endpoints.delete', args: [c, i] });
      return eps.delete(key(c, i));
    },
    async updateLabels(c, i, labels) {
      calls.push({ op: 'endpoints.updateLabels', args: [c, i, labels] });
      const ep = eps.get(key(c, i));
      if (!ep) throw new FakeEndpointError('endpoint_not_found', `endpoint ${key(c, i)} does not exist`);
      const next: Endpoint = { ...ep, labels: { ...labels } };
      eps.set(key(c, i), next);
      return next;
    },
  };

  const core: FakeCore = {
    calls,
    endpoints,
    networks: {
      get: (n) => networks.get(n),
      list: () => networks.list(),
      create: (spec) => networks.create(spec),
      async delete(name) {
        if ([...eps.values()].some((e) => e.network === name))
          throw new NetworkError('network_in_use', `network "${name}" still has endpoints`);
        return networks.delete(name);
      },
    },
    ipam: {
      allocate: (n, owner, opts) => ipam.allocate(n, owner, opts ?? {}),
      releaseOwner: (o) => ipam.releaseOwner(o),
      releaseIp: (n, ip) => ipam.releaseIp(n, ip),
      pools: () => ipam.view(),
    },
  };
  return core;
}
