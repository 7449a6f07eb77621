// An L7 HTTP rule across nodes: a pod on n1 talks HTTP over the overlay to a pod on n2 whose ingress
// policy has HTTP rules, so n2's L7 proxy answers for it: an allowed request reaches the server, a
// denied one gets the proxy's 403, a pod the rule does not admit is dropped at L3/L4, and n2 reports
// each request as an L7 flow naming the sender's identity (carried by the VNI). n2 filters reverse
// paths strictly, and its receive short-cut (bpf/vxlan_rx.c) takes every datagram apart on the
// underlay device, proxied flows too: those reach the proxy through the host device's hairpin (loose
// rp_filter), since from the underlay device, where the remote pod's address is not routed, a strict
// rp_filter drops them (no answer here). A bulk upload's GSO datagrams take that way whole.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { clusterForFile } from './lib/cluster-file.ts';
import { eventually } from './lib/cluster.ts';
import { curl, startHttpServer } from './lib/http.ts';
import { API } from './lib/l7-http-file.ts';
import { l7WorkersConnected } from './lib/l7-workers.ts';
import { randomId } from './lib/agent.ts';
import { flowsUntil } from './lib/vxlan.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const { c, servers, known } = clusterForFile(t, { nodes: 2 });

/** Packets the node's tunnel device has received (ip -s link). */
const tunnelRx = (n: (typeof c.nodes)[number]): number =>
  (
    JSON.parse(
      execFileSync('nsenter', [`--net=${n.netns.path}`, 'ip', '-s', '-j', 'link', 'show', 'membrane_vxlan'], {
        encoding: 'utf8',
      }),
    ) as { stats64: { rx: { packets: number } } }[]
  )[0].stats64.rx.packets;

t.test('a pod on n1 to an L7-policed pod on n2: allowed, denied by the HTTP rule, dropped at L4; L7 flows on n2', async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n2.pod({ app: 'storefront', tier: 'web' });
  const good = await n1.pod({ app: 'checkout', stage: 'live' });
  const bad = await n1.pod({ app: 'crawler' });
  servers.push(await startHttpServer(web.ns, 80, 'web'));
  await eventually('pods known', () => known(web) && known(good) && known(bad), 20_000);
  // A strict reverse-path filter on n2 (RFC 3704; some distributions' default): a proxied flow must
  // reach the stack from the device its source is routed through.
  execFileSync('nsenter', [`--net=${n2.netns.path}`, 'sysctl', '-qw', 'net.ipv4.conf.all.rp_filter=1']);
  const pc = new PolicyClient(n2.client);
  t.teardown(() => pc.delete(['api']));
  await pc.import(API());
  await l7WorkersConnected(n2.client);
  const marker = `/public/x-${randomId()}`;
  const url = (p: string) => `http://${web.ip4}${p}`;
  // The policy reaches n2's datapath and proxy a moment after the import: until a denied method is
  // answered by the proxy.
  await eventually(
    'the HTTP rules enforced on n2',
    async () => (await curl(good.ns, url(`${marker}-warm`), ['-X', 'DELETE'])).status === 403,
    20_000,
    200,
  );

  const tunnelRx0 = tunnelRx(n2);
  const allowed = await curl(good.ns, url(marker));
  t.equal(allowed.status, 200, 'GET /public/... from good (stage=live): 200 from web');
  t.match(allowed.body, /"server":"web"/, "web's own answer");
  t.equal((await curl(good.ns, url(`${marker}-denied`), ['-X', 'DELETE'])).status, 403, 'DELETE from good: 403 from the proxy');
  t.equal((await curl(good.ns, url('/private'))).status, 403, 'a path no rule allows: 403');
  const dropped = await curl(bad.ns, url(marker), [], { timeoutS: 2 });
  t.equal(dropped.status, 0, `crawler (no rule admits it): no answer (curl exit ${dropped.exit})`);
  t.equal(tunnelRx(n2) - tunnelRx0, 0, "none of it came in through n2's tunnel device: vxlan_rx took it, proxied flows too");

  // A bulk upload: good's TSO packets cross the underlay as GSO datagrams, which vxlan_rx takes whole
  // (FIXED_GSO) and, the flow being proxied, hairpins into the host device to n2's proxy.
  const body = crypto.randomBytes(8 << 20);
  const file = path.join(os.tmpdir(), `mbr-upload-${randomId()}`);
  fs.writeFileSync(file, body);
  t.teardown(() => fs.rmSync(file, { force: true }));
  const up = await curl(good.ns, url('/upload'), ['-H', 'Expect:', '--data-binary', `@${file}`], { timeoutS: 60 });
  t.equal(up.status, 200, `an 8 MiB POST /upload through n2's proxy: 200 (curl exit ${up.exit})`);
  const got = up.status === 200 ? (JSON.parse(up.body) as { bytes: number; sha256: string }) : undefined;
  t.same(
    [got?.bytes, got?.sha256],
    [body.length, crypto.createHash('sha256').update(body).digest('hex')],
    'web received it byte for byte',
  );
  t.equal(tunnelRx(n2) - tunnelRx0, 0, "the upload's GSO datagrams did not take n2's tunnel device either");

  const l7 = (method: string, path: string) => (f: import('../shared/src/flows/types.ts').Flow) =>
    f.l7?.type === 'REQUEST' && f.l7.http?.method === method && (f.l7.http?.url ?? '').endsWith(path);
  const [req] = await flowsUntil('n2 reports the allowed request', n2.observerSocket, l7('GET', marker));
  t.match(
    req,
    { verdict: 'FORWARDED', IP: { source: good.ip4, destination: web.ip4 }, source: { identity: good.endpoint.identity } },
    "the allowed request: FORWARDED, from good's address and identity",
  );
  const [denied] = await flowsUntil('n2 reports the denied request', n2.observerSocket, l7('DELETE', `${marker}-denied`));
  t.match(denied, { verdict: 'DROPPED', source: { identity: good.endpoint.identity } }, 'the denied request: DROPPED');
});

t.test("the world to an L7-policed pod on a node whose rp_filter is strict: the proxy's hairpin still answers", async (t) => {
  const n2 = c.nodes[1];
  const web = await n2.pod({ app: 'storefront', tier: 'web' });
  servers.push(await startHttpServer(web.ns, 80, 'web'));
  const w = c.addExternal();
  await w.ns.exec('ip', ['route', 'add', (await n2.client.status()).cluster!.podCidrs.ipv4!, 'via', n2.ip]); // no SNAT
  // Node-wide strict (conf/all = 1): the kernel filters with the larger of it and the device's value,
  // so the host device's own setting must be loose (2) for the hairpinned SYN to pass, not off (0).
  execFileSync('nsenter', [`--net=${n2.netns.path}`, 'sysctl', '-qw', 'net.ipv4.conf.all.rp_filter=1']);
  const pc = new PolicyClient(n2.client);
  t.teardown(() => pc.delete(['world-api']));
  await pc.import(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: world-api}
spec:
  endpointSelector: {matchLabels: {tier: web}}
  ingress:
  - fromCIDR: ["${w.ip}/32"]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/public/.*"}]
`);
  await l7WorkersConnected(n2.client);
  const url = (p: string) => `http://${web.ip4}${p}`;
  await eventually('the HTTP rules enforced on n2', async () => (await curl(w.ns, url('/private'))).status === 403, 20_000, 200);
  t.equal((await curl(w.ns, url('/public/w'))).status, 200, 'GET /public/... from the world: 200 from web');
  t.equal((await curl(w.ns, url('/private'))).status, 403, 'a path no rule allows: 403 from the proxy');
});
