// The pieces of the endpoint recipe that are plain functions of an endpoint: request checks, the
// netns a container may use, derived names and the datapath's view of an endpoint.
import type { Endpoint, EndpointIp, EndpointRequest } from '../types.ts';
import { forbiddenNetnsReason, openNetns, type NetNs } from '../netns/index.ts';
import { addressOnly, ifNameProblem, interfaceMac } from '../net/index.ts';
import { EndpointError } from './errors.ts';
import { attachmentId, endpointKey } from './naming.ts';
import type { PlumbSpec } from './plumbing.ts';

export const STORE_PREFIX = 'endpoints';

export function validateRequest(req: EndpointRequest): void {
  if (!attachmentId(req)) throw new EndpointError('bad_request', 'containerId is required', { field: 'containerId' });
  const ifProblem = ifNameProblem(req.ifName);
  if (ifProblem)
    throw new EndpointError('bad_request', `ifName "${req.ifName}" is not a valid interface name: it ${ifProblem}`, {
      field: 'ifName',
    });
  if (req.mac !== undefined) {
    try {
      interfaceMac(req.mac);
    } catch (e) {
      throw new EndpointError('bad_request', `mac: ${(e as Error).message}`, { field: 'mac' });
    }
  }
  if (req.mtu !== undefined && (!Number.isInteger(req.mtu) || req.mtu < 576 || req.mtu > 65535)) {
    throw new EndpointError('bad_request', `mtu ${req.mtu} is out of range (576-65535)`, { field: 'mtu' });
  }
}

function openNetnsOrFail(path: string): NetNs {
  try {
    return openNetns(path);
  } catch (e) {
    throw new EndpointError('netns_not_found', (e as Error).message, { field: 'netns' });
  }
}

/** A container's netns, never the agent's own (nor the node's): configuring that one would replace
 *  the node's default route and put its addresses on a container interface. */
export function openContainerNetns(path: string): NetNs {
  const ns = openNetnsOrFail(path);
  const why = forbiddenNetnsReason(ns);
  if (why) {
    ns.close();
    throw new EndpointError(
      'netns_not_allowed',
      `netns ${path} is ${why}; a container needs a network namespace of its own, so nothing was changed`,
      { field: 'netns' },
    );
  }
  return ns;
}

export function routesOf(ips: EndpointIp[], inContainer: boolean): Endpoint['routes'] {
  if (!inContainer) return [];
  return ips.map((ip) => ({ dst: ip.family === 4 ? '0.0.0.0/0' : '::/0', gw: ip.gateway }));
}

export function plumbSpec(ep: Endpoint, ns: NetNs | null): PlumbSpec {
  return {
    hostIfName: ep.hostIfName,
    hostMac: ep.hostMac,
    ifName: ep.ifName,
    mac: ep.mac,
    mtu: ep.mtu,
    ips: ep.ips,
    netns: ns,
    // Labels pending (labels/resolver.ts): the host end stays down and unrouted until they arrive.
    holdDown: !!ep.labelsPending && !ep.labelsPending.expired,
  };
}

export function plainIps(ep: Endpoint): string[] {
  return ep.ips.map((ip) => addressOnly(ip.address));
}

export function datapathConfig(ep: Endpoint) {
  const gateway6 = ep.ips.find((ip) => ip.family === 6)?.gateway;
  return {
    hostIfindex: ep.hostIfIndex,
    endpointId: ep.id,
    identity: ep.identity,
    flags: 0,
    hostMac: ep.hostMac,
    containerMac: ep.mac,
    ips: plainIps(ep),
    ...(gateway6 ? { gateway6 } : {}),
  };
}

export function storeKey(ep: Endpoint): string {
  // Container ids are hex for every runtime we know, but stay safe for any string.
  return `${STORE_PREFIX}/${Buffer.from(keyOf(ep)).toString('base64url')}`;
}

export function keyOf(ep: Endpoint): string {
  return endpointKey(attachmentId(ep), ep.ifName);
}
