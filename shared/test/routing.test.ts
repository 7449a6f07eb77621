// Pure parts of cluster routing: the plan from the node records (tunnel and native), the map codecs,
// the MTU arithmetic and the agent's routing flags. The datapath and the kernel routes are tested on
// the multi-node harness (integration/cluster-overlay.test.ts, cluster-native.test.ts).
import t from 'tap';
import type { NodeRecord } from '../src/kvstore/layout.ts';
import { planRouting, remoteNodes, tunnelOverhead } from '../src/routing/plan.ts';
import { decodeOverlayConfig, decodeTunnelEndpoint, encodeOverlayConfig, encodeTunnelEndpoint } from '../src/routing/maps.ts';
import { resolveConfig } from '../src/agent/config.ts';
import { RESERVED } from '../src/identity/reserved.ts';

const noFile = () => {
  throw new Error('ENOENT');
};
const node = (name: string, ip: string, v4?: string, v6?: string, nodeId = 1): NodeRecord => ({
  name,
  cluster: 'c',
  addresses: [{ type: 'InternalIP', ip }],
  podCidrs: { ipv4: v4, ipv6: v6 },
  nodeId,
  agentVersion: 'x',
  registeredAt: '',
  updatedAt: '',
});
const self = { name: 'n1', gateways: { 4: '10.1.1.1', 6: 'fd00:1:1::1' } as const };
const nodes = [
  node('n1', '198.18.0.11', '10.1.1.0/24', 'fd00:1:1::/64', 1),
  node('n2', '198.18.0.12', '10.1.2.0/24', 'fd00:1:2::/64', 2),
  node('n3', '198.18.0.13', '10.1.3.0/24', undefined, 3),
  node('n4', '198.18.0.14', undefined, undefined, 0), // no pod CIDR yet: nothing to route to
];

t.test(
  "tunnel mode: every other node's pod CIDRs and own address go to the tunnel map, routes into the tunnel device",
  async (t) => {
    const p = planRouting('tunnel', self, nodes);
    t.same(
      [...p.tunnel.keys()].sort(),
      ['10.1.2.0/24', '10.1.3.0/24', '198.18.0.12/32', '198.18.0.13/32', 'fd00:1:2::/64'].sort(),
    );
    t.same(p.tunnel.get('fd00:1:2::/64'), { node: 'n2', nodeId: 2, ip: '198.18.0.12' }, 'IPv6 pods over an IPv4 underlay');
    t.notOk(p.tunnel.has('10.1.1.0/24'), 'never this node itself');
    t.same(
      p.routes.get('10.1.2.0/24'),
      { dst: '10.1.2.0/24', node: 'n2', prefSrc: '10.1.1.1' },
      "no gateway: the tunnel device, this node's gateway as source",
    );
    t.same(p.routes.get('fd00:1:2::/64'), { dst: 'fd00:1:2::/64', node: 'n2', prefSrc: 'fd00:1:1::1' });
    t.equal(p.routes.size, 3);
    t.same(p.unreachable, []);
  },
);

t.test(
  "native mode: routes via the node addresses, the tunnel map holds the reachable pod CIDRs only (the datapath's send path, fib.h); pod CIDRs of a family the underlay lacks are reported",
  async (t) => {
    const p = planRouting('native', self, nodes);
    t.same([...p.tunnel.keys()].sort(), ['10.1.2.0/24', '10.1.3.0/24'], 'no node address, no unreachable CIDR');
    t.same(p.routes.get('10.1.3.0/24'), { dst: '10.1.3.0/24', via: '198.18.0.13', node: 'n3', prefSrc: '10.1.1.1' });
    t.notOk(p.routes.has('fd00:1:2::/64'));
    t.same(p.unreachable, [{ node: 'n2', cidr: 'fd00:1:2::/64' }], 'an IPv6 pod CIDR behind an IPv4-only node');
  },
);

t.test("other nodes' addresses and pod CIDR gateways are remote-node in the ipcache, in both modes", async (t) => {
  for (const mode of ['tunnel', 'native'] as const) {
    const p = planRouting(mode, self, nodes);
    t.same(
      [...p.nodeAddresses].sort(),
      [
        ['10.1.2.1/32', RESERVED['remote-node']],
        ['10.1.3.1/32', 6],
        ['198.18.0.12/32', 6],
        ['198.18.0.13/32', 6],
        ['fd00:1:2::1/128', 6],
      ].sort(),
      mode,
    );
  }
  t.equal(RESERVED['remote-node'], 6, "Cilium's number");
});

t.test("another node's record holding this node's own address is reported (a stale record)", async (t) => {
  const ghost = node('n1-old', '198.18.0.11', '10.1.9.0/24', undefined, 9);
  const p = planRouting('tunnel', { ...self, address: '198.18.0.11' }, [...nodes, ghost]);
  t.same(p.claimsSelf, ['n1-old']);
  t.notOk(p.tunnel.has('198.18.0.11/32'), "this node's own address is kept out of the tunnel map");
  t.notOk(p.nodeAddresses.has('198.18.0.11/32'), 'and is never remote-node');
  t.ok(p.tunnel.has('10.1.9.0/24'), "the record's pod CIDR is planned as any other");
  t.same(planRouting('tunnel', { ...self, address: '198.18.0.11' }, nodes).claimsSelf, [], 'none without it');
  t.same(planRouting('tunnel', self, [...nodes, ghost]).claimsSelf, [], 'nor without an own address to compare');
});

t.test('a damaged or incomplete record is skipped, never fatal', async (t) => {
  const bad = { ...node('n5', '198.18.0.15', 'not-a-cidr'), addresses: [{ type: 'InternalIP' as const, ip: 'x' }] };
  const p = planRouting('tunnel', self, [...nodes, bad, node('n6', '198.18.0.16', '10.1.6.0/24', undefined, 6)]);
  t.ok(p.tunnel.has('10.1.6.0/24'));
  t.notOk([...p.tunnel.values()].some((v) => v.node === 'n5'));
  t.same(
    remoteNodes('n1', nodes).map((n) => n.name),
    ['n2', 'n3'],
  );
});

t.test('map encodings match bpf/lib/overlay.h', async (t) => {
  const v = encodeTunnelEndpoint({ nodeId: 7, ip: '198.18.0.12' });
  t.equal(v.length, 24);
  t.equal(v[0], 4, 'family');
  t.same([...v.subarray(8, 12)], [198, 18, 0, 12], 'address in network order');
  t.same(decodeTunnelEndpoint(v), { nodeId: 7, ip: '198.18.0.12' });
  t.same(decodeTunnelEndpoint(encodeTunnelEndpoint({ nodeId: 1, ip: 'fd00::1' })), { nodeId: 1, ip: 'fd00::1' });
  const c = encodeOverlayConfig({ tunnelIfindex: 42, underlay: 6 });
  t.equal(c.length, 32);
  t.same(decodeOverlayConfig(c), { tunnelIfindex: 42, underlay: 6 });
  const n = encodeOverlayConfig({ tunnelIfindex: 0, underlay: 4, native: { underlayIfindex: 7 } });
  t.equal(n.readUInt32LE(4), 2, 'OVERLAY_F_NATIVE');
  t.equal(n.readUInt32LE(8), 7, 'underlay_ifindex');
  t.same(decodeOverlayConfig(n), { tunnelIfindex: 0, underlay: 4, native: { underlayIfindex: 7 } });
  const rx = encodeOverlayConfig({
    tunnelIfindex: 9,
    underlay: 4,
    rx: { underlayIfindex: 3, port: 8472, nodeIpv4: '198.18.0.12' },
  });
  t.equal(rx.readUInt32LE(8), 3, 'underlay_ifindex: where the receive short-cut runs');
  t.equal(rx.readUInt32LE(12), 8472, 'tunnel_port, host order');
  t.same([...rx.subarray(16, 20)], [198, 18, 0, 12], 'node_ipv4 in network order');
  t.same(decodeOverlayConfig(rx), {
    tunnelIfindex: 9,
    underlay: 4,
    rx: { underlayIfindex: 3, port: 8472, nodeIpv4: '198.18.0.12' },
  });
  t.equal(tunnelOverhead(4), 50, 'pods get the underlay MTU minus 50 over IPv4');
  t.equal(tunnelOverhead(6), 70);
});

t.test('routing flags: tunnel by default in cluster mode, native on request, clear errors', async (t) => {
  const base = ['--kvstore', 'etcd', '--kvstore-endpoints', 'http://198.18.0.2:2379', '--node-ip', '198.18.0.11'];
  const c = (args: string[], env: NodeJS.ProcessEnv = {}) => resolveConfig([...base, ...args], env, noFile).cluster!;
  t.match(c([]), { routingMode: 'tunnel', tunnelPort: 8472, tunnelDevice: 'membrane_vxlan' });
  t.equal(c(['--routing-mode', 'native']).routingMode, 'native');
  t.equal(c(['--tunnel', 'disabled']).routingMode, 'native', "Cilium's older spelling");
  t.equal(c([], { MEMBRANE_ROUTING_MODE: 'native' }).routingMode, 'native');
  t.equal(c(['--tunnel-port', '4789']).tunnelPort, 4789);
  t.throws(() => c(['--routing-mode', 'bgp']), /--routing-mode "bgp" is not tunnel or native/);
  t.throws(() => c(['--tunnel', 'geneve']), /--tunnel "geneve" is not vxlan or disabled/);
  t.throws(() => c(['--routing-mode', 'tunnel', '--tunnel', 'disabled']), /needs a tunnel/);
  t.throws(() => c(['--tunnel-port', '70000']), /--tunnel-port "70000" is not a whole number from 1 to 65535/);
  t.throws(() => c(['--tunnel-device', 'a/b']), /--tunnel-device "a\/b" is not a valid interface name/);
  t.throws(() => resolveConfig(['--routing-mode', 'native'], {}, noFile), /--routing-mode is for cluster mode/);
  t.equal(resolveConfig([], {}, noFile).cluster, undefined, 'single node: no routing at all');
});
