// ct_server_ports (bpf/lib/ct_hint.h) only chooses which of conntrack's two lookups runs first, so
// whatever it holds, and any pod can set its bits (each UDP datagram or SYN it may send marks the
// destination port), a packet nobody asked for is a new flow that meets the policy, and a reply is a
// reply. Real packets through BPF_PROG_TEST_RUN (root + bpffs), with the bitmap rewritten before every
// packet to each of: empty, full, set on exactly the ports forged replies come from (every forgery
// looks like a reply), set on exactly the ports real replies go to (every reply looks like a new flow).
import t from 'tap';
import * as bpf from '../src/bpf/libbpf.ts';
import { encodeU32Key } from '../src/maps/codec.ts';
import { eth, ETH_P, ipv4, PROTO, TCP_FLAGS, tcp, udp } from '../src/bpf/packets.ts';
import { bpfHarness, OK, REDIRECT, requireBpf, runCounted, SHOT, vethIfindexes } from './lib/bpf-harness.ts';
import { policyHarness, type TestEndpoint, testEndpoint } from './lib/policy-harness.ts';

requireBpf();

const [ifB] = vethIfindexes('mbh', ['b']);
const ep = (id: number, ifindex: number, n: number, app: string) => testEndpoint(id, ifindex, n, app, '10.249.0', 'fd00:f9');
const A = ep(71, 1, 1, 'a'),
  B = ep(72, ifB, 2, 'b');
const W = '198.18.12.12';
const POLICY_DENIED = 133;
const { SYN, ACK, FIN, RST } = TCP_FLAGS;

const h = bpfHarness();
const p = policyHarness(h, [A, B], 'fd00:f9::fe');

const from = (e: TestEndpoint, dst: string, l4: Buffer, proto: number) =>
  eth(e.hostMac, e.mac, ETH_P.IPV4, ipv4({ src: e.ip, dst, proto }, l4));
const to = (e: TestEndpoint, src: string, l4: Buffer, proto: number, dst = e.ip) =>
  eth(e.mac, e.hostMac, ETH_P.IPV4, ipv4({ src, dst, proto }, l4));

// Every endpoint closed for ingress; egress open.
const CLOSED = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: closed}
spec:
  endpointSelector: {}
  ingress: [{}]
`;
// A: reachable from the world on TCP 8080 and UDP 8053 only, and closed for egress.
const A_SERVER = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a-server}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEntities: [world]
    toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "8053", protocol: UDP}]}]
  egress: [{}]
`;
const B_FROM_A = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-from-a}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress: [{fromEndpoints: [{matchLabels: {app: a}}]}]
`;

// Client ports both above and below the server ports, so the port order guesses wrong for half of them.
const SERVER = [53, 443, 8053, 8080],
  CLIENT = [1000, 40000];
const WORDS = 1024;
type Bits = { name: string; has: (port: number) => boolean };
/** forged: the source ports of the forged replies (the server ports); real: where replies go. */
const STATES: Bits[] = [
  { name: 'empty', has: () => false },
  { name: 'full', has: () => true },
  { name: 'server ports only', has: (port) => SERVER.includes(port) },
  { name: 'client ports only', has: (port) => CLIENT.includes(port) },
];

function setBits(s: Bits): void {
  const fd = h.dp.mapFd('ct_server_ports');
  for (let slot = 0; slot < WORDS; slot++) {
    let w = 0n;
    for (let b = 0; b < 64; b++) if (s.has(slot * 64 + b)) w |= 1n << BigInt(b);
    const v = Buffer.alloc(8);
    v.writeBigUInt64LE(w);
    bpf.mapUpdate(fd, 'ct_server_ports', encodeU32Key(slot), v);
  }
}

/** The verdict with the bitmap in state `s` as the packet arrives (the datapath marks ports as it goes). */
function run(s: Bits, hook: 'from' | 'to', e: TestEndpoint, pkt: Buffer) {
  setBits(s);
  return runCounted(h, hook, pkt, e.ifindex);
}
const denied = { verdict: SHOT, reason: POLICY_DENIED };

let seq = 100;
for (const s of STATES) {
  t.test(`bitmap ${s.name}: replies nobody asked for meet the policy, asked-for replies pass`, async (t) => {
    t.teardown(() => p.clear());
    await p.apply(`${CLOSED}---\n${B_FROM_A}`);
    for (const sp of SERVER)
      for (const cp of CLIENT) {
        const at = `${sp} -> ${cp}`;
        // Forged replies from the world to A (closed for ingress): no entry of A's has this tuple.
        t.same(run(s, 'to', A, to(A, W, udp(sp, cp), PROTO.UDP)), denied, `UDP ${at}, never asked`);
        for (const [f, what] of [
          [SYN | ACK, 'SYN-ACK'],
          [ACK, 'ACK'],
          [FIN | ACK, 'FIN-ACK'],
          [RST | ACK, 'RST-ACK'],
        ] as const)
          t.same(run(s, 'to', A, to(A, W, tcp(sp, cp, f, ++seq), PROTO.TCP)), denied, `TCP ${what} ${at}, never asked`);
        // B's forged SYN-ACK to A (A is closed to B; A never opened B:sp).
        t.same(run(s, 'from', B, from(B, A.ip, tcp(sp, cp, SYN | ACK), PROTO.TCP)), denied, `B's SYN-ACK ${at}`);

        // A asks (UDP and TCP), the world answers: replies, in both port orders.
        t.same(run(s, 'from', A, from(A, W, udp(cp, sp), PROTO.UDP)), { verdict: OK }, `A -> W UDP ${cp} -> ${sp}`);
        t.same(run(s, 'to', A, to(A, W, udp(sp, cp), PROTO.UDP)), { verdict: OK }, `its reply ${at}`);
        t.same(run(s, 'to', B, to(B, W, udp(sp, cp), PROTO.UDP, A.ip)), denied, `the same reply at B's hook`);
        t.same(run(s, 'from', A, from(A, W, tcp(cp, sp, SYN, ++seq), PROTO.TCP)), { verdict: OK }, `A -> W SYN ${cp} -> ${sp}`);
        t.same(run(s, 'to', B, to(B, W, tcp(sp, cp, SYN | ACK), PROTO.TCP, A.ip)), denied, `its SYN-ACK at B's hook`);
        t.same(run(s, 'to', A, to(A, W, tcp(sp, cp, SYN | ACK), PROTO.TCP)), { verdict: OK }, `its SYN-ACK ${at}`);
        t.same(run(s, 'to', A, to(A, W, tcp(sp, cp, ACK), PROTO.TCP)), { verdict: OK }, `its ACK ${at}`);
        t.same(run(s, 'from', A, from(A, W, tcp(cp, sp, ACK), PROTO.TCP)), { verdict: OK }, `A's ACK ${cp} -> ${sp}`);
        // A closes its side: the world's SYN on the tuple is a new flow (A is closed), its ACK a reply.
        t.same(run(s, 'from', A, from(A, W, tcp(cp, sp, FIN | ACK), PROTO.TCP)), { verdict: OK }, `A's FIN ${cp} -> ${sp}`);
        t.same(run(s, 'to', A, to(A, W, tcp(sp, cp, SYN, ++seq), PROTO.TCP)), denied, `a SYN ${at} after A's FIN`);
        t.same(run(s, 'to', A, to(A, W, tcp(sp, cp, ACK), PROTO.TCP)), { verdict: OK }, `the ACK of A's FIN ${at}`);
        t.same(run(s, 'to', A, to(A, W, tcp(sp, cp, RST | ACK), PROTO.TCP)), { verdict: OK }, `a RST ${at} ends it`);
        t.same(run(s, 'to', A, to(A, W, tcp(sp, cp, ACK), PROTO.TCP)), denied, `nothing of it is left ${at}`);

        // Pod to pod: A -> B allowed, B's replies pass, B's own new flow to A does not.
        t.same(
          run(s, 'from', A, from(A, B.ip, tcp(cp, sp, SYN, ++seq), PROTO.TCP)),
          { verdict: REDIRECT },
          `A -> B ${cp} -> ${sp}`,
        );
        t.same(run(s, 'from', B, from(B, A.ip, tcp(sp, cp, SYN | ACK), PROTO.TCP)), { verdict: REDIRECT }, `B's SYN-ACK ${at}`);
        t.same(run(s, 'from', B, from(B, A.ip, tcp(sp, cp, ACK), PROTO.TCP)), { verdict: REDIRECT }, `B's ACK ${at}`);
        t.same(run(s, 'from', B, from(B, A.ip, tcp(sp, cp + 1, ACK), PROTO.TCP)), denied, `B's ACK ${sp} -> ${cp + 1}`);
        t.same(run(s, 'from', B, from(B, A.ip, tcp(sp, cp, RST), PROTO.TCP)), { verdict: REDIRECT }, `B's RST ${at}`);
      }
  });

  t.test(`bitmap ${s.name}: a server closed for egress answers only what it was asked`, async (t) => {
    t.teardown(() => p.clear());
    await p.apply(A_SERVER);
    for (const cp of CLIENT) {
      t.same(run(s, 'from', A, from(A, W, tcp(8080, cp, SYN | ACK), PROTO.TCP)), denied, `SYN-ACK 8080 -> ${cp}, never asked`);
      t.same(run(s, 'from', A, from(A, W, udp(8053, cp), PROTO.UDP)), denied, `UDP 8053 -> ${cp}, never asked`);
      t.same(run(s, 'to', A, to(A, W, tcp(cp, 8080, SYN, ++seq), PROTO.TCP)), { verdict: OK }, `W -> A SYN ${cp} -> 8080`);
      t.same(run(s, 'from', A, from(A, W, tcp(8080, cp, SYN | ACK), PROTO.TCP)), { verdict: OK }, `A's SYN-ACK 8080 -> ${cp}`);
      t.same(run(s, 'from', A, from(A, W, tcp(8080, cp, ACK), PROTO.TCP)), { verdict: OK }, `A's ACK 8080 -> ${cp}`);
      t.same(
        run(s, 'from', A, from(A, W, tcp(cp, 8080, SYN, ++seq), PROTO.TCP)),
        denied,
        `A's own SYN ${cp} -> 8080 on the tuple`,
      );
      t.same(run(s, 'to', A, to(A, W, udp(cp, 8053), PROTO.UDP)), { verdict: OK }, `W -> A UDP ${cp} -> 8053`);
      t.same(run(s, 'from', A, from(A, W, udp(8053, cp), PROTO.UDP)), { verdict: OK }, `A's answer 8053 -> ${cp}`);
      t.same(run(s, 'from', A, from(A, W, udp(8053, cp + 1), PROTO.UDP)), denied, `A's datagram 8053 -> ${cp + 1}`);
    }
  });
}

// A: open to the world's connections; to the world's port 80 (A_WEB), then its port 81 only (A_WEB_GONE).
const aEgress = (port: number, name: string) => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress: [{fromEntities: [world]}]
  egress: [{toEntities: [world], toPorts: [{ports: [{port: "${port}", protocol: TCP}]}]}]
`;

for (const s of STATES)
  t.test(`bitmap ${s.name}: a revoked flow and the open flow on its reversed tuple`, async (t) => {
    t.teardown(() => p.clear());
    for (const cp of CLIENT) {
      await p.apply(aEgress(80, 'a-web'));
      // A's connection to W:80, closing; W then opens one from 80 to A's port (A admits the world).
      t.same(run(s, 'from', A, from(A, W, tcp(cp, 80, SYN, 1), PROTO.TCP)), { verdict: OK }, `A -> W ${cp} -> 80`);
      t.same(run(s, 'to', A, to(A, W, tcp(80, cp, SYN | ACK, 5, 2), PROTO.TCP)), { verdict: OK }, 'its SYN-ACK');
      t.same(run(s, 'from', A, from(A, W, tcp(cp, 80, FIN | ACK, 2, 6), PROTO.TCP)), { verdict: OK }, "A's FIN");
      t.same(run(s, 'to', A, to(A, W, tcp(80, cp, SYN, 100), PROTO.TCP)), { verdict: OK }, `W -> A 80 -> ${cp}: a new flow`);
      // A's own flow to another port of W, left open: revoked with the first one by the next policy.
      t.same(run(s, 'from', A, from(A, W, tcp(cp + 1, 80, SYN, 1), PROTO.TCP)), { verdict: OK }, `A -> W ${cp + 1} -> 80`);
      await p.apply(aEgress(81, 'a-web'));
      // A's answers on W's flow are that flow's replies whatever the guess; A's revoked flow stays cut.
      t.same(run(s, 'from', A, from(A, W, tcp(cp, 80, SYN | ACK, 50, 101), PROTO.TCP)), { verdict: OK }, "A's SYN-ACK to W");
      t.same(run(s, 'from', A, from(A, W, tcp(cp, 80, ACK, 51, 101), PROTO.TCP)), { verdict: OK }, "A's ACK to W's flow");
      t.same(run(s, 'to', A, to(A, W, tcp(80, cp, ACK, 101, 52), PROTO.TCP)), { verdict: OK }, "W's ACK");
      t.same(run(s, 'from', A, from(A, W, tcp(cp + 1, 80, ACK, 2), PROTO.TCP)), denied, `A's revoked flow ${cp + 1} -> 80`);
      await p.clear();
    }
  });

t.test('a pod that may send marks ports; what it marked changes no verdict', async (t) => {
  t.teardown(() => p.clear());
  await p.apply(CLOSED);
  setBits(STATES[0]);
  // A floods the world's ports 20000-20127 (allowed: egress is open): each datagram marks its port.
  for (let port = 20000; port < 20128; port++)
    t.equal(runCounted(h, 'from', from(A, W, udp(5000, port), PROTO.UDP), A.ifindex).verdict, OK);
  const words = [312, 313, 314].map((slot) =>
    bpf.mapLookup(h.dp.mapFd('ct_server_ports'), 'ct_server_ports', encodeU32Key(slot), 8),
  );
  t.same(
    words.map((w) => w?.readBigUInt64LE().toString(16)),
    ['ffffffff00000000', 'ffffffffffffffff', 'ffffffff'],
    'ports 20000-20127 marked (slots 312-314)',
  );
  // Forged "replies" from those ports to ports A never used, and from A's own flows' ports the other way.
  for (const port of [20000, 20063, 20127])
    for (const dst of [80, 5001, 60000]) {
      t.same(runCounted(h, 'to', to(A, W, udp(port, dst), PROTO.UDP), A.ifindex), denied, `UDP ${port} -> ${dst}`);
      t.same(runCounted(h, 'to', to(A, W, tcp(port, dst, ACK), PROTO.TCP), A.ifindex), denied, `ACK ${port} -> ${dst}`);
    }
  t.same(runCounted(h, 'to', to(A, W, udp(20000, 5000), PROTO.UDP), A.ifindex), { verdict: OK }, 'the real reply 20000 -> 5000');
});
