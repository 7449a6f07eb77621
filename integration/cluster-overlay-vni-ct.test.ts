// A tracked flow belongs to the identity it was admitted for, not to its tuple (2-node harness): a pod
// on another node that takes a deleted pod's address sends on the old pod's tuples under its own VNI
// before this node learns the new ipcache entry. Hand-made VXLAN from n1's address (as
// cluster-overlay-vni.test.ts sends it): a UDP flow admitted for identity A (client), then the same
// 5-tuple under identity B's VNI (other) is asked again and dropped, while A's packets still pass;
// also for a reply of a flow web began (web's egress allows only client).
import t from 'tap';
import crypto from 'node:crypto';
import { clusterForFile } from './lib/cluster-file.ts';
import { eventually } from './lib/cluster.ts';
import { sniff } from './lib/raw.ts';
import { flowsOf, flowsUntil, sendUdp, vxlanPayload } from './lib/vxlan.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { eth, ETH_P, ipv4, PROTO, udp } from '../shared/src/bpf/packets.ts';
import type { Flow } from '../shared/src/flows/types.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const { c, known } = clusterForFile(t, { nodes: 2 });
const tag = crypto.randomBytes(3).toString('hex');
const PORT = 9000 + crypto.randomInt(0, 500);

const policy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web-ct-${tag}
spec:
  endpointSelector:
    matchLabels:
      app: web-ct-${tag}
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client-ct-${tag}
    toPorts:
    - ports:
      - port: "${PORT}"
        protocol: UDP
  egress:
  - toEndpoints:
    - matchLabels:
        app: client-ct-${tag}
    toPorts:
    - ports:
      - port: "${PORT}"
        protocol: UDP
`;

t.test('a VNI other than the one a flow was admitted for is asked again: dropped, the old sender still passes', async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n2.pod({ app: `web-ct-${tag}` });
  const client = await n1.pod({ app: `client-ct-${tag}` });
  const other = await n1.pod({ app: `other-ct-${tag}` });
  await eventually('pods known', () => known(web) && known(client) && known(other), 20_000);
  await new PolicyClient(n2.client).import(policy);
  t.teardown(() => new PolicyClient(n2.client).delete([`web-ct-${tag}`]).catch(() => undefined));
  const [A, B] = [client.endpoint.identity, other.endpoint.identity];

  // One UDP datagram client.ip4:sport -> web.ip4:dport through n2's tunnel port, under `vni`.
  const forge = (vni: number, sport: number, dport: number, mark: string) =>
    sendUdp(
      n1.netns,
      n2.ip,
      8472,
      vxlanPayload(
        vni,
        eth(
          '02:00:00:00:00:01',
          '02:00:00:00:00:02',
          ETH_P.IPV4,
          ipv4({ src: client.ip4, dst: web.ip4, proto: PROTO.UDP }, udp(sport, dport, Buffer.from(mark))),
        ),
      ),
    );
  const udpAt = (sport: number, dport: number) => (f: Flow) =>
    f.l4?.UDP?.sourcePort === sport && f.l4?.UDP?.destinationPort === dport && f.IP?.destination === web.ip4;

  // The policy is in n2's datapath once B's first datagram of a fresh tuple is dropped.
  let sport = 20000 + crypto.randomInt(0, 20000);
  await eventually(
    'policy enforced on n2',
    async () => {
      const s = ++sport;
      await forge(B, s, PORT, 'probe');
      await new Promise((r) => setTimeout(r, 300));
      return (await flowsOf(n2.observerSocket, udpAt(s, PORT))).some((f) => f.verdict === 'DROPPED');
    },
    20_000,
    100,
  );

  const cap = await sniff(web.ns, 40);
  t.teardown(() => cap.stop());
  const seen = (mark: string) => cap.frames().some((x) => x.dir === 'in' && x.frame.includes(Buffer.from(`${mark}-${tag}`)));
  const sent = async (mark: string) => {
    await eventually(`${mark} reached web`, () => seen(mark), 5000, 50).catch(() => undefined);
    return seen(mark);
  };

  // 1. A flow admitted for A; the same tuple under B's VNI; A again.
  const s1 = ++sport;
  await forge(A, s1, PORT, `A1-${tag}`);
  t.ok(await sent('A1'), `A (${A}) opens ${client.ip4}:${s1} -> ${web.ip4}:${PORT}`);
  await forge(B, s1, PORT, `B1-${tag}`);
  const [drop] = await flowsUntil(
    'n2 reports B on the tuple',
    n2.observerSocket,
    (f) => udpAt(s1, PORT)(f) && f.verdict === 'DROPPED',
  ).catch(() => [undefined]);
  t.match(
    drop,
    { verdict: 'DROPPED', dropReasonDesc: 'POLICY_DENIED', source: { identity: B } },
    `B (${B}) on A's tuple: dropped, naming B`,
  );
  await forge(A, s1, PORT, `A2-${tag}`);
  t.ok(await sent('A2'), "A's next datagram on its flow still passes");
  t.notOk(seen('B1'), "B's datagram never reached web");

  // 2. A flow web began towards client; a reply under B's VNI is asked as web's egress to B (denied).
  const q = 30000 + crypto.randomInt(0, 20000);
  await web.ns.exec(process.execPath, [
    '-e',
    `const s = require('dgram').createSocket('udp4'); s.bind(${q}, () => s.send(Buffer.from('out'), ${PORT}, '${client.ip4}', () => s.close()));`,
  ]);
  await new Promise((r) => setTimeout(r, 300));
  await forge(B, PORT, q, `B2-${tag}`);
  const [drop2] = await flowsUntil(
    "n2 reports B's reply",
    n2.observerSocket,
    (f) => udpAt(PORT, q)(f) && f.verdict === 'DROPPED',
  ).catch(() => [undefined]);
  t.match(drop2, { verdict: 'DROPPED', source: { identity: B } }, "B's reply on web's flow to client: dropped, naming B");
  await forge(A, PORT, q, `A3-${tag}`);
  t.ok(await sent('A3'), "client's reply passes");
  t.notOk(seen('B2'), "B's reply never reached web");
});
