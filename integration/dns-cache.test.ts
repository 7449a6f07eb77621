// The datapath's DNS answer cache (--dns-cache on; bpf/lib/dns_cache.h, shared/src/dns/answer-cache.ts),
// with real packets from pod netns: a pod's repeated query is answered by its tc program (the proxy
// never sees it; the answer's ID, question and counted-down TTL are right; the server may even be
// gone), and the attacks on it fail: another pod whose DNS rules refuse the name still gets REFUSED,
// a policy change that refuses the name takes effect at once, malformed and altered queries never get
// the cached answer, and an entry is not served past its TTL.
import t from 'tap';
import * as packet from 'dns-packet';
import fs from 'node:fs';
import path from 'node:path';
import { startDnsmasq } from './lib/dns.ts';
import { dnsFqdnForFile, nodeIn, until } from './lib/dns-fqdn-file.ts';
import { ObserverClient } from '../shared/src/flows/client.ts';
import { probe } from './lib/probe.ts';
import { execFileSync } from 'node:child_process';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const f = dnsFqdnForFile(t, { agentArgs: ['--dns-cache', 'on'] });

/** Sends each hex datagram from one socket in `ns` to server:53, one after another; the reply to each
 *  (hex) or "timeout". */
async function exchange(ns: { path: string }, server: string, queries: Buffer[], waitMs = 1500): Promise<string[]> {
  const out = await nodeIn(
    ns,
    `
    const s = require('dgram').createSocket('udp4');
    const qs = process.argv.slice(1); const got = [];
    const next = () => {
      if (got.length === qs.length) { process.stdout.write(JSON.stringify(got)); process.exit(0); }
      const q = Buffer.from(qs[got.length], 'hex');
      const timer = setTimeout(() => { s.removeAllListeners('message'); got.push('timeout'); next(); }, ${waitMs});
      s.once('message', (m) => { clearTimeout(timer); got.push(m.toString('hex')); next(); });
      s.send(q, 53, '${server}');
    };
    s.bind(0, next);`,
    queries.map((q) => q.toString('hex')),
  );
  return JSON.parse(out) as string[];
}

const query = (id: number, name: string, type: packet.RecordType = 'A') =>
  packet.encode({ type: 'query', id, flags: packet.RECURSION_DESIRED, questions: [{ type, name }] });

interface Reply {
  id: number;
  rcode: number;
  qname: string;
  ips: string[];
  ttls: number[];
}
const REFUSED = 5;
/** A reply's ID, rcode, question name, addresses and TTLs; undefined for "timeout". */
function decode(hex: string): Reply | undefined {
  if (hex === 'timeout') return undefined;
  const d = packet.decode(Buffer.from(hex, 'hex'));
  const answers = (d.answers ?? []) as unknown as { data?: unknown; ttl?: number }[];
  return {
    id: d.id ?? -1,
    rcode: (d.flags ?? 0) & 0xf,
    qname: d.questions?.[0]?.name ?? '',
    ips: answers.map((a) => String(a.data)),
    ttls: answers.map((a) => a.ttl ?? -1),
  };
}

/** The answer cache's generation (dns_cache_config, read by bpftool): the agent changes it on every
 *  change of its policy maps or ipcache, and entries stored under an older one are not served. */
function cacheGeneration(): number {
  const out = execFileSync(
    'bpftool',
    ['-j', 'map', 'lookup', 'pinned', path.join(f.agent.bpffsDir, 'dns_cache_config'), 'key', '0', '0', '0', '0'],
    { encoding: 'utf8' },
  );
  const v = (JSON.parse(out) as { value: string[] }).value.map((b) => Number(b));
  return Buffer.from(v).readUInt32LE(4);
}

/** Asks `q` with the server paused (SIGSTOP), so that only the datapath can answer it. A change of
 *  the maps drops every entry (another test file's host device address is one: the host identity's
 *  addresses), which a loaded run can meet between storing an answer and asking again. `storedGen` is
 *  the generation read before the answer was stored: when it is no longer current and nothing
 *  answered, the answer is stored again (the server resumed, the proxy asked) and `q` asked again,
 *  5 times at most. A try with the generation unchanged counts as it is. Leaves the server paused;
 *  returns the generation to pass to the next call. */
async function askCached(
  server: { child: { kill(s: NodeJS.Signals): boolean } },
  ns: { path: string },
  dnsIp: string,
  q: Buffer,
  prime: Buffer,
  storedGen: number,
  pauseMs = 0,
): Promise<{ reply: string; tries: number; gen: number }> {
  let gen = storedGen;
  for (let tries = 1; ; tries++) {
    server.child.kill('SIGSTOP');
    if (pauseMs) await new Promise((r) => setTimeout(r, pauseMs));
    const [reply] = await exchange(ns, dnsIp, [q]);
    if (decode(reply)?.ips.length || cacheGeneration() === gen || tries === 5) return { reply, tries, gen };
    server.child.kill('SIGCONT');
    gen = cacheGeneration(); // read before storing: a change after it shows in the next try
    await exchange(ns, dnsIp, [prime]);
  }
}

async function dnsStatus(): Promise<{ hits: number; queries: number }> {
  const s = (await f.agent.client.status()) as { dns?: { cache?: { hits: number }; stats?: { queries: number } } };
  return { hits: s.dns?.cache?.hits ?? -1, queries: s.dns?.stats?.queries ?? -1 };
}

t.test('repeated queries are answered by the datapath, never what the proxy would refuse', async (t) => {
  const { world, W, nsOf, children, tmp, pc } = f;
  // A server with a long TTL on evilDns (the policy's second DNS server): entries stay valid for the
  // test, however slow the run (at 30 s a loaded run outlived the entry before its last query).
  const TTL = 300;
  const server = await startDnsmasq(world, fs.mkdtempSync(path.join(tmp, 'dnsc-')), W.evilDns, { hosts: f.hosts(), ttl: TTL });
  children.push(server.child);
  // A pod whose DNS rules allow only other.test.internal, on the same server.
  await f.pod('narrow', { app: 'narrow' });
  await pc.import(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: narrow-dns}
spec:
  endpointSelector: {matchLabels: {app: narrow}}
  egress:
  - toCIDR: [${W.evilDns}/32]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchName: other.test.internal}]}
`);

  const before = await dnsStatus();
  const firstAsked = Date.now(); // no entry is older than this
  const firstGen = cacheGeneration(); // nor stored under an older generation
  // The first answer teaches a new address (the maps change: nothing is cached under the verdict made
  // before); once an answer teaches nothing new it is cached, and the next query is answered by the
  // datapath.
  const replies0 = await exchange(
    nsOf.client,
    W.evilDns,
    [1, 2, 3, 4].map((i) => query(0x1110 + i, 'api.test.internal')),
  );
  t.same(
    replies0.map((r) => decode(r)?.ips),
    [[W.api], [W.api], [W.api], [W.api]],
    'every query is answered',
  );
  t.same(
    replies0.map((r) => decode(r)?.id),
    [0x1111, 0x1112, 0x1113, 0x1114],
    'each with its own ID',
  );
  const afterFour = await dnsStatus();
  t.ok(afterFour.hits - before.hits >= 1, `some by the datapath (${afterFour.hits - before.hits})`);
  t.equal(afterFour.queries - before.queries + afterFour.hits - before.hits, 4, 'the rest by the proxy');
  t.equal(await probe(nsOf.client, W.api, 80, 5000), 'ok', 'the address it names is reachable (learned before it was cached)');

  // EDNS (an OPT record, as many stub resolvers send): cached too, under its own OPT record; a query that differs in
  // a header flag (CD: checking disabled) is another query, the proxy's.
  const edns = (id: number, flags = packet.RECURSION_DESIRED) =>
    packet.encode({
      type: 'query',
      id,
      flags,
      questions: [{ type: 'A', name: 'api.test.internal' }],
      additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232 }] as never,
    });
  const beforeEdns = await dnsStatus();
  const ednsReplies = await exchange(nsOf.client, W.evilDns, [edns(0x2001), edns(0x2002), edns(0x2003)]);
  t.same(
    ednsReplies.map((r) => decode(r)?.ips),
    [[W.api], [W.api], [W.api]],
    'EDNS queries answered',
  );
  const afterEdns = await dnsStatus();
  t.ok(afterEdns.hits - beforeEdns.hits >= 1, `EDNS queries answered by the datapath too (${afterEdns.hits - beforeEdns.hits})`);
  const [cd] = await exchange(nsOf.client, W.evilDns, [edns(0x2004, packet.RECURSION_DESIRED | packet.CHECKING_DISABLED)]);
  t.same(decode(cd)?.ips, [W.api], 'a query with CD set is answered');
  const afterCd = await dnsStatus();
  t.equal(afterCd.hits, afterEdns.hits, 'by the proxy, not from the entry of a query without CD');
  t.equal(afterCd.queries - afterEdns.queries, 1, 'the proxy saw it');

  // The server down (paused; killed below): still answered, the TTL counted down.
  const {
    reply: down,
    tries,
    gen,
  } = await askCached(
    server,
    nsOf.client,
    W.evilDns,
    query(0x3333, 'api.test.internal'),
    query(0x3330, 'api.test.internal'),
    firstGen,
    1200,
  );
  const a3 = decode(down);
  t.equal(a3?.id, 0x3333, `a cached answer with the server down (try ${tries})`);
  t.equal(a3?.qname, 'api.test.internal', 'its question is the query’s');
  const ttl = a3?.ttls[0] ?? -1;
  // Stored at most this long ago (a slow run takes seconds from the first query to here).
  const maxAge = Math.ceil((Date.now() - firstAsked) / 1000);
  t.ok(ttl >= TTL - maxAge - 1 && ttl < TTL, `its TTL counts down from ${TTL} (${ttl}; stored at most ${maxAge} s ago)`);

  // Every answered query is still an L7 DNS flow, the cached ones marked as such.
  const observer = new ObserverClient(f.agent.observerSocket);
  t.teardown(() => observer.close());
  const cachedFlows = await until('DNS flows of cached answers', async () => {
    const got = (await observer.collect({ number: 1000, whitelist: [{ eventType: [{ type: 129 }] }] }))
      .map((x) => x.flow!)
      .filter((fl) => fl.l7?.dns?.observationSource === 'membrane-dns-cache');
    return got.some((fl) => fl.l7?.type === 'RESPONSE') && got.some((fl) => fl.l7?.type === 'REQUEST') ? got : undefined;
  });
  const cachedAnswer = cachedFlows.find((fl) => fl.l7?.type === 'RESPONSE')!;
  t.equal(cachedAnswer.l7?.dns?.query, 'api.test.internal.', 'a cached answer as an L7 flow: the query');
  t.same(cachedAnswer.l7?.dns?.ips, [W.api], 'its addresses');
  t.equal(cachedAnswer.destination?.ID, f.eps.client.id, 'to the client endpoint');

  // Another pod's rules refuse the name: it is REFUSED though the client's answer is cached.
  const [narrow] = await exchange(nsOf.narrow, W.evilDns, [query(0x4444, 'api.test.internal')]);
  t.equal(decode(narrow)?.rcode, REFUSED, 'a pod whose DNS rules refuse the name gets REFUSED');

  // Altered and malformed queries never get the cached answer (they go to the proxy: the server is paused).
  const q = query(0x5555, 'api.test.internal');
  const truncated = q.subarray(0, q.length - 2);
  const response = Buffer.from(q);
  response[2] |= 0x80; // QR: a response sent as a query
  const extra = Buffer.concat([q, Buffer.from([0])]);
  const aaaa = query(0x5556, 'api.test.internal', 'AAAA');
  const twoQuestions = Buffer.from(q);
  twoQuestions.writeUInt16BE(2, 4);
  const hitsBefore = (await dnsStatus()).hits;
  const upper = query(0x5557, 'API.Test.Internal');
  const replies = await exchange(nsOf.client, W.evilDns, [truncated, response, extra, aaaa, twoQuestions, upper], 700);
  for (const [i, what] of [
    'truncated',
    'QR set',
    'a trailing byte',
    'another type',
    'QDCOUNT 2',
    'the name in other case',
  ].entries()) {
    const r = decode(replies[i]);
    t.notOk(r?.ips.length, `${what}: no cached answer (${r ? r.rcode : 'no reply'})`);
  }
  t.equal((await dnsStatus()).hits, hitsBefore, 'none of them answered by the datapath');
  const { reply: still, tries: stillTries } = await askCached(
    server,
    nsOf.client,
    W.evilDns,
    query(0x6666, 'api.test.internal'),
    query(0x6660, 'api.test.internal'),
    gen,
  );
  server.child.kill('SIGKILL');
  t.same(decode(still)?.ips, [W.api], `the program still answers the real query afterwards (try ${stillTries})`);

  // A policy change refusing the name: the cached answer is not served any more.
  await pc.import(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-fqdn}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toCIDR: [${W.dns}/32, ${W.evilDns}/32]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchPattern: "*.pattern.test"}]}
`);
  const [afterChange] = await exchange(nsOf.client, W.evilDns, [query(0x7777, 'api.test.internal')]);
  t.equal(decode(afterChange)?.rcode, REFUSED, 'after the policy refuses the name: REFUSED, not the cached answer');
});

t.test('an entry is not served past its TTL', async (t) => {
  const { world, W, nsOf, children, tmp, pc } = f;
  await pc.import(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-fqdn}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toCIDR: [${W.evilDns}/32]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchPattern: "*.test.internal"}]}
`);
  const server = await startDnsmasq(world, fs.mkdtempSync(path.join(tmp, 'dnst-')), W.evilDns, { hosts: f.hosts(), ttl: 2 });
  children.push(server.child);
  const hits = (await dnsStatus()).hits;
  const answers = await exchange(
    nsOf.client,
    W.evilDns,
    [1, 2, 3].map((i) => query(0x1000 + i, 'other.test.internal')),
  );
  t.same(
    answers.map((a) => decode(a)?.ips),
    [[W.other], [W.other], [W.other]],
    'answered three times',
  );
  t.ok((await dnsStatus()).hits - hits >= 1, 'the last by the datapath');
  server.child.kill('SIGKILL');
  await new Promise((r) => setTimeout(r, 2500));
  const [late] = await exchange(nsOf.client, W.evilDns, [query(0x1004, 'other.test.internal')], 1500);
  t.notOk(decode(late)?.ips.length, `after the TTL no cached answer (${late === 'timeout' ? 'no reply' : decode(late)?.rcode})`);
});
