// Externally allocated addresses (Docker's IPAM, delegated CNI IPAM, the API): unique on the node,
// recorded in IPAM under the endpoint, refused outside every network unless a delegated IPAM chose them.
import t from 'tap';
import { Ipam } from '../src/ipam/index.ts';
import { MemoryStore } from '../src/store/index.ts';
import { AddressBook, assignAddresses, ensureRecorded } from '../src/endpoint/addresses.ts';
import type { EndpointRequest, Network } from '../src/types.ts';

const net = (name: string, cidr: string, gateway: string): Network => ({
  name,
  subnets: [{ cidr, gateway, family: 4 }],
  mtu: 1500,
  options: {},
  createdAt: '',
});
const NET = net('default', '10.9.0.0/24', '10.9.0.1');
const owner = (attachment: string) => ({ kind: 'endpoint', attachment, ifName: 'eth0' }) as const;

async function setup() {
  const ipam = await Ipam.open(new MemoryStore());
  await ipam.ensurePool('default', [{ cidr: '10.9.0.0/24', gateway: '10.9.0.1' }]);
  await ipam.ensurePool('other', [{ cidr: '10.8.0.0/24', gateway: '10.8.0.1' }]);
  return { ipam, addresses: new AddressBook() };
}

const req = (id: string, extra: Partial<EndpointRequest>): EndpointRequest => ({ containerId: id, ifName: 'eth0', ...extra });

t.test("a delegated IPAM handing out a live endpoint's address is refused, and nothing changes", async (t) => {
  const d = await setup();
  const undoA: (() => unknown)[] = [];
  const [a] = await assignAddresses(d, 'A/eth0', owner('A'), req('A', {}), NET, undoA);
  const before = JSON.stringify(d.ipam.allocations());
  const undo: (() => unknown)[] = [];
  await t.rejects(
    assignAddresses(d, 'B/eth0', owner('B'), req('B', { externalIpam: true, ips: [a.address.split('/')[0]] }), NET, undo),
    { code: 'address_in_use', message: /already used by endpoint A\/eth0/ },
  );
  for (const u of undo.reverse()) await u();
  t.equal(JSON.stringify(d.ipam.allocations()), before, 'IPAM unchanged');
  t.equal(d.addresses.holder(a.address.split('/')[0]), 'A/eth0', 'A keeps its address');
});

t.test('an external address inside a pool is allocated there under the endpoint; released with it', async (t) => {
  const d = await setup();
  const undo: (() => unknown)[] = [];
  const ips = await assignAddresses(d, 'S/eth0', owner('S'), req('S', { externalIpam: true, ips: ['10.9.0.77'] }), NET, undo);
  t.same(ips, [{ address: '10.9.0.77/32', gateway: '10.9.0.1', family: 4, subnet: '10.9.0.0/24' }]);
  t.same(d.ipam.ownerOf('default', '10.9.0.77'), owner('S'), 'recorded under the endpoint');
  await t.rejects(
    d.ipam.allocate('default', owner('X'), { ip: '10.9.0.77' }),
    { code: 'address_in_use' },
    'the agent IPAM never hands it out',
  );
  t.equal(await d.ipam.releaseOwner(owner('S')), 1);
});

t.test('outside every pool: only a delegated IPAM; recorded as an external reservation and unique', async (t) => {
  const d = await setup();
  const undo: (() => unknown)[] = [];
  const ips = await assignAddresses(d, 'H/eth0', owner('H'), req('H', { externalIpam: true, ips: ['172.30.0.5'] }), NET, undo);
  t.equal(ips[0].gateway, '10.9.0.1', "a delegated range still routes through the network's gateway");
  t.same(d.ipam.externalOwnerOf('172.30.0.5'), owner('H'));
  const other = new AddressBook(); // as after a restart: only IPAM remembers
  await t.rejects(
    assignAddresses(
      { ipam: d.ipam, addresses: other },
      'I/eth0',
      owner('I'),
      req('I', { externalIpam: true, ips: ['172.30.0.5'] }),
      NET,
      [],
    ),
    { code: 'address_in_use', message: /held by ep:H\/eth0/ },
  );
  await t.rejects(
    assignAddresses(
      d,
      'D/eth0',
      owner('D'),
      req('', { externalIpam: true, ips: ['172.30.0.6'], docker: { endpointId: 'D', networkId: 'n' } }),
      NET,
      [],
    ),
    { code: 'address_out_of_range', message: /outside network "default"/ },
    "a Docker endpoint's address must lie in its network",
  );
  await t.rejects(
    assignAddresses(
      d,
      'E/eth0',
      owner('E'),
      req('', { externalIpam: true, ips: ['10.8.0.9'], docker: { endpointId: 'E', networkId: 'n' } }),
      NET,
      [],
    ),
    { code: 'address_out_of_range', message: /lies in network "other"/ },
  );
  await t.rejects(
    assignAddresses(d, 'G/eth0', owner('G'), req('G', { externalIpam: true, ips: ['10.9.0.1'] }), NET, []),
    { code: 'address_in_use', message: /gateway/ },
    "the network's gateway is never an endpoint's",
  );
  await t.rejects(
    assignAddresses(d, 'G/eth0', owner('G'), req('G', { externalIpam: true, ips: ['10.9.0.5', '10.9.0.5'] }), NET, []),
    { code: 'bad_request', field: 'ips' },
  );
});

t.test("Docker's own IPAM hand-back: the address its RequestAddress holds is accepted once", async (t) => {
  const d = await setup();
  await d.ipam.allocate('default', { kind: 'docker-address', network: 'default', lease: 'l1' }, { ip: '10.9.0.40' });
  const dreq = (id: string) => req('', { externalIpam: true, ips: ['10.9.0.40'], docker: { endpointId: id, networkId: 'n' } });
  const ips = await assignAddresses(d, 'D1/x', owner('D1'), dreq('D1'), NET, []);
  t.equal(ips[0].address, '10.9.0.40/32');
  await t.rejects(
    assignAddresses(d, 'D2/x', owner('D2'), dreq('D2'), NET, []),
    { code: 'address_in_use' },
    'a second endpoint with it is refused',
  );
});

t.test('restore records what an older version left unrecorded, and reports a clash', async (t) => {
  const d = await setup();
  t.same(await ensureRecorded(d, 'O/eth0', owner('O'), ['10.9.0.60'], NET, false), []);
  t.same(d.ipam.ownerOf('default', '10.9.0.60'), owner('O'));
  const clash = await ensureRecorded(d, 'P/eth0', owner('P'), ['10.9.0.60'], NET, false);
  t.match(clash, [/already used by endpoint O\/eth0/]);
});
