// toFQDNs and DNS rules against a real DNS server: dnsmasq (Debian) in a "world" netns of our own
// (198.18.0.0/15), clients in netns pods that resolve a name and connect to the answer at once, the
// agent's DNS proxy in between (the setup: lib/dns-fqdn-file.ts). The allowed name connects (the first
// connection, right after the answer), another address of the same world does not; wildcards; CNAME
// chains; TCP DNS; a name the DNS rule refuses (REFUSED, and a DROPPED flow naming the policy); TTL
// expiry; an address change. Attacks, the example policies and an agent restart are in the other
// dns-fqdn-*.test.ts files.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { REPO } from './lib/agent.ts';
import { probe } from './lib/probe.ts';
import { startFlow, type LiveFlow } from './lib/tcp.ts';
import { resolveAndConnect } from './lib/dns.ts';
import { dnsFqdnForFile, until } from './lib/dns-fqdn-file.ts';
import { metricsText } from './lib/metrics.ts';
import { ObserverClient } from '../shared/src/flows/client.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const f = dnsFqdnForFile(t);
/** A connection to api.test.internal held from the first lookup to the TTL test: it keeps the entry
 *  alive however slow the machine (answers have a 2 s TTL), and shows an expired entry stays while used. */
let held: LiveFlow | undefined;
t.teardown(() => held?.stop());

t.test('the allowed name connects at once; another address of the same world does not', async (t) => {
  const { W, eps, nsOf, cli, cacheList } = f;
  const r = await resolveAndConnect(nsOf.client, W.dns, 'api.test.internal', 80);
  t.same(r.ips, [W.api], 'the answer came through the proxy unchanged');
  t.equal(r.connect, 'ok', 'the first connection, right after the answer, is allowed');
  held = startFlow(nsOf.client, W.api, 80);
  await until('the held connection to echo', async () => (held!.echoed() > 0 ? true : undefined), 10_000);
  t.equal(await probe(nsOf.client, W.other, 80), 'timeout', 'another address of the same world: dropped');
  t.equal(await probe(nsOf.client, W.api, 443), 'timeout', 'the learned address on another port: dropped');
  const cache = await cacheList('api.test.internal');
  t.match(
    cache,
    [{ name: 'api.test.internal.', ip: W.api, endpoints: [eps.client.id] }],
    'fqdn cache list: name, address, endpoint',
  );
  t.ok(cache[0].identity && cache[0].identity >= 0xff000000, 'the address has an FQDN identity');
  const list = await cli(['fqdn', 'cache', 'list']);
  t.match(
    list.out,
    new RegExp(`api\\.test\\.internal\\.\\s+${W.api.replace(/\./g, '\\.')}\\s+2\\s`),
    `membrane fqdn cache list: ${list.err}`,
  );
  const tr = await cli(['policy', 'trace', '--src', 'app=client', '--dst-fqdn', 'api.test.internal', '--dport', '80/tcp']);
  t.equal(tr.code, 0, 'membrane policy trace --dst-fqdn: allowed');
  t.match(tr.out, new RegExp(`learned addresses ${W.api.replace(/\./g, '\\.')}`));
  const trDns = await cli([
    'policy',
    'trace',
    '--src',
    'app=client',
    '--dst-ip',
    W.dns,
    '--dport',
    '53/udp',
    '--dns-query',
    'evil.example',
  ]);
  t.equal(trDns.code, 2, 'membrane policy trace --dns-query: a refused name is DENIED');
  t.match(trDns.out, /refuses evil\.example\./);
  // Around the DNS rules: another resolver (the datapath drops it: no rule allows DNS there), and a
  // forged "answer" sent by the pod itself teaches nothing.
  const elsewhere = await resolveAndConnect(nsOf.client, W.other, 'other.test.internal', 0);
  t.equal(elsewhere.error, 'ETIMEOUT', 'DNS to a resolver the policy does not name is dropped');
  const forged = execFileSync(
    'nsenter',
    [
      `--net=${nsOf.client.path}`,
      process.execPath,
      '-e',
      `
    const p = require('dns-packet'), s = require('dgram').createSocket('udp4');
    const m = p.encode({ type: 'response', id: 7, flags: p.RECURSION_DESIRED, questions: [{ type: 'A', name: 'www.pattern.test' }], answers: [{ type: 'A', name: 'www.pattern.test', ttl: 300, data: '${W.other}' }] });
    s.send(m, 53, '${W.dns}', () => setTimeout(() => { s.close(); process.stdout.write('sent'); }, 300));`,
    ],
    { cwd: REPO, encoding: 'utf8' },
  );
  t.equal(forged, 'sent');
  t.notOk(
    (await cacheList()).some((e) => e.ip === W.other),
    'a response sent as a query teaches nothing',
  );
  t.equal(await probe(nsOf.client, W.other, 80), 'timeout', 'and opens nothing');
  const bystander = await resolveAndConnect(nsOf.bystander, W.dns, 'api.test.internal', 0);
  t.same(bystander.ips, [W.api], 'a pod no DNS rule selects resolves directly (not proxied)');
  t.same((await cacheList('api.test.internal'))[0].endpoints, [eps.client.id], 'and teaches nothing');
});

t.test('wildcard pattern; CNAME chains; TCP DNS', async (t) => {
  const { W, nsOf, cacheList } = f;
  const www = await resolveAndConnect(nsOf.client, W.dns, 'www.pattern.test', 80);
  t.same([www.ips, www.connect], [[W.www], 'ok'], '*.pattern.test: resolved and connected');
  const alias = await resolveAndConnect(nsOf.client, W.dns, 'alias.test.internal', 80);
  t.same([alias.ips, alias.connect], [[W.api], 'ok'], 'an alias of api.test.internal');
  t.same(
    (await cacheList('alias.test.internal')).map((e) => e.ip),
    [W.api],
    'the alias is learned with the chain',
  );
  const tcp = await resolveAndConnect(nsOf.client, W.dns, 'api.test.internal', 80, { tcp: true });
  t.same([tcp.ips, tcp.connect], [[W.api], 'ok'], 'DNS over TCP through the proxy');
  const tcpRefused = await resolveAndConnect(nsOf.client, W.dns, 'evil.example', 0, { tcp: true });
  t.equal(tcpRefused.error, 'EREFUSED', 'TCP: a refused name gets REFUSED');
});

t.test('a name the DNS rule does not allow: REFUSED, a DROPPED flow naming the policy, no address', async (t) => {
  const { agent, W, nsOf, cli } = f;
  const observer = new ObserverClient(agent.observerSocket);
  t.teardown(() => observer.close());
  const r = await resolveAndConnect(nsOf.client, W.dns, 'evil.example', 80);
  t.equal(r.error, 'EREFUSED', 'the proxy answers REFUSED (dnsmasq would have answered)');
  t.equal(await probe(nsOf.client, W.other, 80), 'timeout', 'its address stays closed');
  const flows = await until('DNS flows', async () => {
    const got = (await observer.collect({ number: 1000, whitelist: [{ eventType: [{ type: 129 }] }] }))
      .map((x) => x.flow!)
      .filter((f) => f.l7?.dns);
    return got.some((f) => f.l7?.dns?.query === 'evil.example.') && got.some((f) => f.l7?.type === 'RESPONSE') ? got : undefined;
  });
  const refused = flows.find((f) => f.l7?.dns?.query === 'evil.example.')!;
  t.equal(refused.verdict, 'DROPPED');
  t.match(refused.egressDeniedBy, [{ name: 'client-fqdn' }], 'names the policy');
  t.match(refused.Summary, /refused by the DNS rules of client-fqdn/);
  const answer = flows.find((f) => f.l7?.type === 'RESPONSE' && f.l7.dns?.query === 'api.test.internal.')!;
  t.match(answer.l7?.dns, { ips: [W.api], rcode: 0, qtypes: ['A'] }, 'the answer as an L7 DNS flow');
  t.equal(answer.verdict, 'FORWARDED');
  const cliFlows = await cli(['observe', '--type', 'l7', '--last', '1000', '-o', 'json']);
  const dnsLines = cliFlows.out
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const j = JSON.parse(l);
      return j.flow ?? j;
    })
    .filter((f) => f?.l7?.dns);
  t.ok(
    dnsLines.some((f) => f.l7.dns.query === 'evil.example.' && f.verdict === 'DROPPED'),
    `membrane observe --type l7 shows the refused query (${cliFlows.err})`,
  );
  t.ok(
    dnsLines.some((f) => f.l7.type === 'RESPONSE' && f.l7.dns.ips?.includes(W.api)),
    'and answers with their addresses',
  );
  const cliText = await cli(['observe', '--type', 'l7', '--last', '1000']);
  t.match(cliText.out, /DNS Query evil\.example\. A/, 'the text form names the query');
  const metrics = await metricsText(agent.client);
  t.match(metrics, /membrane_dns_queries_total\{verdict="refused"\} [1-9]/, 'queries by verdict');
  t.match(metrics, /membrane_fqdn_cache_names [1-9]/, 'cache size');
});

t.test('TTL expiry: kept while connected, removed once unused; an address change is followed', async (t) => {
  const { W, dnsmasq, nsOf, hosts, cacheList } = f;
  await resolveAndConnect(nsOf.client, W.dns, 'api.test.internal', 0);
  // TTL 2 s, plus the upkeep's grace (5 s) and interval (5 s): past all of it, the connection held
  // since the first test still uses the address, so the entry stays and the connection keeps working.
  const expiresAt = Math.max(...(await cacheList('api.test.internal')).map((e) => Date.parse(e.expiresAt)));
  await new Promise((res) => setTimeout(res, Math.max(0, expiresAt + 12_000 - Date.now())));
  const echoed = held!.echoed();
  await until('the held connection to echo more', async () => (held!.echoed() > echoed ? true : undefined), 10_000);
  t.equal(held!.failed(), null, 'the connection opened after the lookup outlives the TTL');
  t.ok(
    (await cacheList('api.test.internal')).some((e) => e.ip === W.api && Date.parse(e.expiresAt) < Date.now()),
    'its expired entry stays while the connection uses it',
  );
  held!.stop();
  held = undefined;
  // Unused now: gone within ~15 s (plus the conntrack entry of the closed connection).
  await until(
    'api.test.internal to expire',
    async () => ((await cacheList('api.test.internal')).length ? undefined : true),
    40_000,
  );
  t.pass('expired from the cache');
  t.equal(await probe(nsOf.client, W.api, 80), 'timeout', 'and its address is closed again');
  await dnsmasq.setHosts(hosts(W.alt));
  const r = await resolveAndConnect(nsOf.client, W.dns, 'api.test.internal', 80);
  t.same([r.ips, r.connect], [[W.alt], 'ok'], 'the new address is learned and allowed at once');
  await dnsmasq.setHosts(hosts());
});
