// The feed-reader example DNS policies (examples/policies/dns: matchName, pattern, port) with a
// kube-dns pod, and a DNS rule on another port than 53 (the setup: lib/dns-fqdn-file.ts).
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { ip4, REPO } from './lib/agent.ts';
import { probe } from './lib/probe.ts';
import { resolveAndConnect, startDnsmasq } from './lib/dns.ts';
import { dnsFqdnForFile } from './lib/dns-fqdn-file.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const f = dnsFqdnForFile(t);

t.test('the feed-reader DNS policies (matchName, pattern, port) with a kube-dns pod', async (t) => {
  const { pc, W, nsOf, children, tmp, pod, hosts } = f;
  const kubeDns = await pod('kubedns', { 'k8s-app': 'kube-dns' }, 'kube-system');
  const bot = await pod('bot', { app: 'feed-reader', team: 'news' });
  const podDns = await startDnsmasq(nsOf.kubedns, fs.mkdtempSync(path.join(tmp, 'kd-')), ip4(kubeDns), {
    hosts: hosts(),
    ttl: 30,
  });
  children.push(podDns.child);
  t.teardown(() => pc.delete(['default/feed-reader-egress']).catch(() => pc.delete(['feed-reader-egress'])));
  // What each allows: api.feeds.example on 443 and 80, mobile.feeds.example (only a pattern selects it).
  const cases: [string, { api80: string; mobile: string }][] = [
    ['feed-reader-matchname.yaml', { api80: 'ok', mobile: 'timeout' }],
    ['feed-reader-pattern.yaml', { api80: 'ok', mobile: 'ok' }],
    ['feed-reader-port.yaml', { api80: 'timeout', mobile: 'ok' }],
  ];
  for (const [file, want] of cases) {
    // Pods made through the API carry cni: labels (k8s: ones come from containerd's CRI): the kube-dns
    // selector's "k8s:k8s-app" is asked without its source here; everything else is the file as is.
    await pc.import(
      fs
        .readFileSync(path.join(REPO, 'examples/policies/dns', file), 'utf8')
        .replace('"k8s:k8s-app": kube-dns', '"k8s-app": kube-dns'),
    );
    const r = await resolveAndConnect(nsOf.bot, ip4(kubeDns), 'api.feeds.example', 443);
    t.same([r.ips, r.connect], [[W.feeds], 'ok'], `${file}: api.feeds.example:443 right after the lookup`);
    t.equal(await probe(nsOf.bot, W.feeds, 80), want.api80, `${file}: api.feeds.example:80 ${want.api80}`);
    const mobile = await resolveAndConnect(nsOf.bot, ip4(kubeDns), 'mobile.feeds.example', 443);
    t.same([mobile.ips, mobile.connect], [[W.mobile], want.mobile], `${file}: mobile.feeds.example:443 ${want.mobile}`);
    const other = await resolveAndConnect(nsOf.bot, ip4(kubeDns), 'www.example.com', 443);
    t.same(
      [other.ips, other.connect],
      [[W.elsewhere], 'timeout'],
      `${file}: a name outside feeds.example resolves (DNS allows *) but is not reachable`,
    );
  }
  void bot;
});

t.test('a DNS rule on another port than 53: diverted there, and 53 is not open', async (t) => {
  const { pc, world, W, nsOf, children, tmp, pod, hosts, cacheList } = f;
  const alt = await pod('alt', { app: 'alt' });
  const altDns = await startDnsmasq(world, fs.mkdtempSync(path.join(tmp, 'alt-')), W.dns, {
    hosts: hosts(),
    ttl: 30,
    port: 5353,
  });
  children.push(altDns.child);
  const altPolicy = (name: string) => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: alt-port}
spec:
  endpointSelector: {matchLabels: {app: alt}}
  egress:
  - toCIDR: [${W.dns}/32]
    toPorts: [{ports: [{port: "5353", protocol: UDP}], rules: {dns: [{matchName: ${name}}]}}]
  - toFQDNs: [{matchName: api.test.internal}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`;
  await pc.import(altPolicy('api.test.internal'));
  t.teardown(() => pc.delete(['default/alt-port']).catch(() => pc.delete(['alt-port'])));
  const r = await resolveAndConnect(nsOf.alt, `${W.dns}:5353`, 'api.test.internal', 80);
  t.same([r.ips, r.connect], [[W.api], 'ok'], 'resolved on 5353 through the proxy and connected at once');
  t.ok(
    (await cacheList('api.test.internal')).some((e) => e.endpoints.includes(alt.id)),
    'learned for this pod',
  );
  t.equal(
    (await resolveAndConnect(nsOf.alt, `${W.dns}:5353`, 'other.test.internal', 0)).error,
    'EREFUSED',
    'a name its DNS rule does not allow: REFUSED',
  );
  t.equal(
    (await resolveAndConnect(nsOf.alt, W.dns, 'api.test.internal', 0)).error,
    'ETIMEOUT',
    'port 53, which no rule names: dropped',
  );
  // The proxy keeps verdicts per sender, server and name: a policy change must reach them at once.
  await pc.import(altPolicy('other.test.internal'));
  t.same(
    (await resolveAndConnect(nsOf.alt, `${W.dns}:5353`, 'other.test.internal', 0)).ips,
    [W.other],
    'the policy now allows the name refused before: answered',
  );
  t.equal(
    (await resolveAndConnect(nsOf.alt, `${W.dns}:5353`, 'api.test.internal', 0)).error,
    'EREFUSED',
    'and the name allowed (and asked) before is refused now',
  );
  altDns.stop();
});
