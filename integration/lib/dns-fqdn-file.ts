// What every dns-fqdn*.test.ts file starts for itself (so the files run in parallel): an agent with
// its DNS proxy, a "world" netns (198.18.0.0/15) holding the addresses below with echo servers on 80
// and 443 and dnsmasq on `dns`, a client pod (app=client) under the client-fqdn policy and a bystander
// pod no policy selects. Every name and address is unique per file.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import type { Test } from 'tap';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import type { Endpoint } from '../../shared/src/types.ts';
import type { FqdnCacheEntryView } from '../../shared/src/agent/dns.ts';
import { randomId, REPO, startAgent, type TestAgent } from './agent.ts';
import { standIn } from './cluster-file.ts';
import { startDnsmasq, type Dnsmasq } from './dns.ts';
import { createNetns, type TestNetns } from './netns.ts';
import { killAll, startEchoServer } from './tcp.ts';
import { createWorld, type TestWorld } from './world.ts';
import { membrane } from './cli.ts';
import { pollFor } from '../../shared/test/lib/poll.ts';

/** The last octet of each world address. */
const HOSTS = {
  dns: 53,
  api: 10,
  other: 11,
  alt: 12,
  www: 20,
  feeds: 30,
  elsewhere: 31,
  mobile: 32,
  spoof: 40,
  dns2: 54,
  evilDns: 55,
} as const;
export type WorldAddrs = Record<keyof typeof HOSTS, string>;

export interface DnsFqdnFile {
  agent: TestAgent;
  pc: PolicyClient;
  /** The world netns. */
  world: TestNetns;
  /** Its addresses by role. */
  W: WorldAddrs;
  /** dnsmasq on W.dns:53 (TTL 2 s; alias.test.internal is a CNAME of api.test.internal). */
  dnsmasq: Dnsmasq;
  /** Pods by name (client and bystander from the start; more through pod()). */
  eps: Record<string, Endpoint>;
  nsOf: Record<string, TestNetns>;
  /** Processes the file's tests start: killed at teardown. */
  children: ChildProcess[];
  /** A scratch dir removed at teardown. */
  tmp: string;
  pod(name: string, labels: Record<string, string>, namespace?: string): Promise<Endpoint>;
  /** The world's hosts file (api.test.internal at `api`). */
  hosts(api?: string): [string, string][];
  cli(args: string[]): Promise<{ code: number | null; out: string; err: string }>;
  cacheList(name?: string): Promise<FqdnCacheEntryView[]>;
}

const policy = (W: WorldAddrs) => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-fqdn}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toCIDR: [${W.dns}/32, ${W.evilDns}/32]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns:
        - matchPattern: "*.test.internal"
        - matchPattern: "*.pattern.test"
  - toFQDNs: [{matchName: api.test.internal}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - toFQDNs: [{matchPattern: "*.pattern.test"}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`;

export function dnsFqdnForFile(t: Test, opts: { agentArgs?: string[] } = {}): DnsFqdnFile {
  let file: DnsFqdnFile | undefined;
  let world: TestWorld | undefined;
  let agent: TestAgent | undefined;
  const nss: TestNetns[] = [];
  const children: ChildProcess[] = [];
  const tmp = fs.mkdtempSync('/tmp/mbr-dns-');
  t.before(async () => {
    const a = await startAgent({ extraArgs: ['--fqdn-min-ttl', '0', ...(opts.agentArgs ?? [])] });
    agent = a;
    const pc = new PolicyClient(a.client);
    world = await createWorld(Object.values(HOSTS));
    const net = world.net;
    const W = Object.fromEntries(Object.entries(HOSTS).map(([k, h]) => [k, `${net}.${h}`])) as WorldAddrs;
    const eps: Record<string, Endpoint> = {};
    const nsOf: Record<string, TestNetns> = {};
    const hosts = (api = W.api): [string, string][] => [
      [api, 'api.test.internal'],
      [W.other, 'other.test.internal'],
      [W.www, 'www.pattern.test'],
      [W.other, 'evil.example'],
      [W.feeds, 'api.feeds.example'],
      [W.mobile, 'mobile.feeds.example'],
      [W.elsewhere, 'www.example.com'],
    ];
    const pod = async (name: string, labels: Record<string, string>, namespace?: string) => {
      const ns = createNetns('mbd');
      nss.push(ns);
      // The pod namespace comes only as the runtime's K8S_POD_NAMESPACE (the metadata membrane-cni fills).
      const metadata = namespace ? { 'k8s:io.kubernetes.pod.namespace': namespace } : undefined;
      const ep = await a.client.createEndpoint({
        containerId: `dns-${name}-${randomId()}`,
        netns: ns.path,
        ifName: 'eth0',
        labels,
        ...(metadata ? { metadata } : {}),
      });
      eps[name] = ep;
      nsOf[name] = ns;
      return ep;
    };
    await pod('client', { app: 'client' });
    await pod('bystander', { app: 'bystander' });
    children.push(await startEchoServer(world.ns, 80, '0.0.0.0'), await startEchoServer(world.ns, 443, '0.0.0.0'));
    const dnsmasq = await startDnsmasq(world.ns, tmp, W.dns, {
      hosts: hosts(),
      ttl: 2,
      cnames: [['alias.test.internal', 'api.test.internal']],
    });
    children.push(dnsmasq.child);
    await pc.import(policy(W));
    file = {
      agent: a,
      pc,
      world: world.ns,
      W,
      dnsmasq,
      eps,
      nsOf,
      children,
      tmp,
      pod,
      hosts,
      cli: (args) => membrane(args, { MEMBRANE_SOCKET: a.socket }),
      cacheList: (name) => a.client.request('GET', `/v1/fqdn/cache${name ? `?name=${name}` : ''}`),
    };
  });
  t.teardown(async () => {
    killAll(children);
    world?.remove();
    await agent?.cleanup();
    for (const ns of nss) ns.remove();
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  return standIn(() => file, 'the DNS test world');
}

/** Polls `fn` every 250 ms until it returns a value (throws naming `what` after `ms`: 30 s, DNS answers
 *  and FQDN identities take a resolver round trip and a policy sync). */
export const until = <T>(what: string, fn: () => Promise<T | undefined>, ms = 30_000): Promise<T> => pollFor(what, fn, ms, 250);

/** Runs a node script inside a netns (dns-packet resolvable from the repository). */
export function nodeIn(ns: { path: string }, script: string, args: string[] = []): Promise<string> {
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_OPTIONS: '' };
  delete env.NODE_EXTRA_CA_CERTS;
  const child = spawn('nsenter', [`--net=${ns.path}`, process.execPath, '-e', script, ...args], {
    cwd: REPO,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    out += d.toString();
  });
  return new Promise((resolve) => child.once('exit', () => resolve(out.trim())));
}
