// An Endpoint record as the endpoint manager keeps it, for tests that hand one to the policy engine,
// the flow enricher or the API: the fields no test looks at are filled in here, once; a test names
// the ones it cares about (addresses, labels, identity, interface).
import type { Endpoint } from '../../src/types.ts';

export function endpointRecord(id: number, fields: Partial<Endpoint> = {}): Endpoint {
  return {
    id,
    containerId: `c${id}`,
    ifName: 'eth0',
    network: 'n',
    netns: null,
    hostIfName: 'x',
    hostIfIndex: 100 + id,
    hostMac: '02:00:00:00:00:01',
    mac: '02:00:00:00:00:02',
    mtu: 1500,
    ips: [],
    routes: [],
    labels: {},
    metadata: {},
    identity: 0,
    externalIpam: false,
    createdAt: '',
    ...fields,
  };
}
