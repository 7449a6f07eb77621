// Native routing's receive path (bpf/underlay.c: other nodes' packets enter this node's pods from the
// underlay device's tc ingress, not through the stack) attacked with forged sources. A stranger on the
// underlay (no node, no pod) hand-crafts SYNs to a pod on n1: each gets the ipcache identity of the
// source address it claims, which is all native routing can know, and never more. Claiming one of n1's
// own pods or n1's own address (what n1 itself vouches for) is dropped as spoofed, not admitted as that
// pod or as "host", though the policy admits both.
import t from 'tap';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { clusterForFile } from './lib/cluster-file.ts';
import { probe } from './lib/probe.ts';
import { sendFrames } from './lib/raw.ts';
import { flowsUntil } from './lib/vxlan.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { eth, ETH_P, ipv4, PROTO, tcp, TCP_FLAGS, withChecksum } from '../shared/src/bpf/packets.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const { c, enforce, serve } = clusterForFile(t, { nodes: 2, agentArgs: ['--routing-mode', 'native'] });

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-nf}
spec:
  endpointSelector: {matchLabels: {app: web-nf}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client-nf}}]
    toPorts: [{ports: [{port: "8084", protocol: TCP}]}]
  - fromEntities: [host]
`;

t.test('native routing, forged sources from the underlay: the ipcache identity, never more', async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n1.pod({ app: 'web-nf' });
  const local = await n1.pod({ app: 'client-nf', role: 'local' });
  const client = await n2.pod({ app: 'client-nf' });
  const other = await n2.pod({ app: 'other-nf' });
  await enforce({ policy: POLICY, web, port: 8084, admitted: client, denied: other, pods: [web, local, client, other] });
  t.equal(await probe(local.ns, web.ip4, 8084, 5000), 'ok', 'the local client is admitted (same labels)');
  t.equal(await probe(n1.netns, web.ip4, 8084, 5000), 'ok', "and n1's host (fromEntities: host)");

  const w = c.addExternal();
  const n1Mac = JSON.parse(await n1.netns.exec('ip', ['-j', 'link', 'show', 'eth0']))[0].address as string;
  let sport = 40000 + crypto.randomInt(0, 20000);
  const forge = async (src: string) => {
    const l4 = withChecksum(4, src, web.ip4, PROTO.TCP, tcp(++sport, 8084, TCP_FLAGS.SYN, crypto.randomInt(1, 2 ** 31)));
    const frame = eth(n1Mac, '02:00:00:00:00:01', ETH_P.IPV4, ipv4({ src, dst: web.ip4, proto: PROTO.TCP }, l4));
    await sendFrames(w.ns, [frame]);
    const port = sport;
    const [f] = await flowsUntil(`n1 reports the SYN from ${src}`, n1.observerSocket, (x) => x.l4?.TCP?.sourcePort === port);
    return f;
  };

  const f1 = await forge(other.ip4);
  t.match(f1, { verdict: 'DROPPED', dropReasonDesc: 'POLICY_DENIED' }, "claiming other (n2): dropped by web's policy");
  t.equal(f1.source?.identity, other.endpoint.identity, "as other's identity (the ipcache's for the address)");

  const f2 = await forge(client.ip4);
  t.not(f2.verdict, 'DROPPED', "claiming client (n2): admitted, as the stack's path admitted it before");
  t.equal(f2.source?.identity, client.endpoint.identity, "with client's identity, the ipcache's for the address");

  const f3 = await forge(local.ip4);
  t.match(f3, { verdict: 'DROPPED', dropReasonDesc: 'INVALID_SOURCE_IP' }, 'claiming a pod of n1 itself: dropped as spoofed');

  const f4 = await forge(n1.ip);
  t.match(f4, { verdict: 'DROPPED', dropReasonDesc: 'INVALID_SOURCE_IP' }, "claiming n1's own address: dropped, never host");

  // A live TCP connection from (nsPath, from:fromPort) to (to:toPort), then one ACK forged from the
  // underlay as `src:sport -> web:dport`, a segment of that connection: n1's verdict on it.
  const forgeIntoConnection = async (
    what: string,
    conn: { nsPath: string; from: string; fromPort: number; to: string; toPort: number },
    seg: { src: string; sport: number; dport: number },
  ) => {
    const py = `import socket,time\ns=socket.socket()\ns.bind(('${conn.from}',${conn.fromPort}))\ns.connect(('${conn.to}',${conn.toPort}))\ntime.sleep(15)`;
    const held = spawn('nsenter', [`--net=${conn.nsPath}`, 'python3', '-c', py], { stdio: 'ignore' });
    try {
      await flowsUntil(what, n1.observerSocket, (x) => x.l4?.TCP?.sourcePort === conn.fromPort);
      const l4 = withChecksum(
        4,
        seg.src,
        web.ip4,
        PROTO.TCP,
        tcp(seg.sport, seg.dport, TCP_FLAGS.ACK, crypto.randomInt(1, 2 ** 31)),
      );
      const frame = eth(n1Mac, '02:00:00:00:00:01', ETH_P.IPV4, ipv4({ src: seg.src, dst: web.ip4, proto: PROTO.TCP }, l4));
      await sendFrames(w.ns, [frame]);
      const [f] = await flowsUntil(
        `n1 reports the segment forged into ${what}`,
        n1.observerSocket,
        (x) => x.l4?.TCP?.sourcePort === seg.sport && x.l4?.TCP?.destinationPort === seg.dport && x.verdict === 'DROPPED',
      );
      return f;
    } finally {
      held.kill('SIGKILL');
    }
  };
  const freePort = () => 30000 + crypto.randomInt(0, 9000);

  // 5. Into a live connection of n1's host with web (tracked by web's ingress entry, peer host): a forged
  //    segment of it from the underlay is recognised by the entry, without a lookup per packet.
  const hostPort = freePort();
  const f5 = await forgeIntoConnection(
    "n1's host connection",
    { nsPath: n1.netns.path, from: n1.ip, fromPort: hostPort, to: web.ip4, toPort: 8084 },
    { src: n1.ip, sport: hostPort, dport: 8084 },
  );
  t.match(f5, { dropReasonDesc: 'INVALID_SOURCE_IP' }, "a segment of n1's own connection, forged from the underlay: dropped");

  // 6. Into a live connection between two of n1's own pods (local -> web): local's identity is one a
  //    remote pod with the same labels shares, so only the source address can tell that a segment
  //    claiming local's side came from the underlay: dropped, never part of their flow.
  const podPort = freePort();
  const f6 = await forgeIntoConnection(
    'the local connection',
    { nsPath: local.ns.path, from: local.ip4, fromPort: podPort, to: web.ip4, toPort: 8084 },
    { src: local.ip4, sport: podPort, dport: 8084 },
  );
  t.match(
    f6,
    { dropReasonDesc: 'INVALID_SOURCE_IP' },
    "a segment of two local pods' connection, forged from the underlay: dropped",
  );

  // 7. The same from the other end: web's own connection to local, a forged reply claiming local's side.
  await serve(local, 8085);
  const webPort = freePort();
  const f7 = await forgeIntoConnection(
    "web's connection to local",
    { nsPath: web.ns.path, from: web.ip4, fromPort: webPort, to: local.ip4, toPort: 8085 },
    { src: local.ip4, sport: 8085, dport: webPort },
  );
  t.match(f7, { dropReasonDesc: 'INVALID_SOURCE_IP' }, 'a reply of a local pod, forged from the underlay: dropped');

  t.equal(await probe(client.ns, web.ip4, 8084, 5000), 'ok', 'the real client still gets through');
  await new PolicyClient(n1.client).delete(['web-nf']);
});
