// What every l7-http*.test.ts file starts for itself (so the files run in parallel): an agent, the pods
// web (app=storefront, tier=web; HTTP servers on 8080 and 80), good (app=checkout, stage=live), bad
// (app=crawler) and inv (app=inventory; HTTP on 80), and a "world" netns (198.18.0.0/15) with an HTTP
// server on W1:80. Every name and address is unique per file; each test removes its policies.
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import type { Endpoint } from '../../shared/src/types.ts';
import { ip4, randomId, REPO, startAgent, type TestAgent } from './agent.ts';
import { type CliResult, membrane } from './cli.ts';
import { standIn } from './cluster-file.ts';
import { startHttpServer } from './http.ts';
import { l7WorkersConnected } from './l7-workers.ts';
import { createNetns, type TestNetns } from './netns.ts';
import { killAll } from './tcp.ts';
import { createWorld, type TestWorld } from './world.ts';

export const FIXTURES = path.join(REPO, 'examples/policies/l7-http');
export const fixture = (f: string) => fs.readFileSync(path.join(FIXTURES, f), 'utf8');
// The l7 tests import ip4 from here with the rest of this harness.
export { ip4 };

/** A policy on tier=web port 80 for stage=live: GET|HEAD /public/.*, POST|PUT /upload, GET /ws (+ `extra` YAML). */
export const API = (extra = '') => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api}
spec:
  endpointSelector: {matchLabels: {tier: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {stage: live}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: "GET|HEAD", path: "/public/.*"}
        - {method: "POST|PUT", path: "/upload"}
        - {method: GET, path: /ws}
${extra}`;

export interface L7HttpFile {
  agent: TestAgent;
  pc: PolicyClient;
  /** Pods by name (web, good, bad, inv from the start; more through pod()). */
  eps: Record<string, Endpoint>;
  nsOf: Record<string, TestNetns>;
  /** The world netns and its address (an HTTP server named "world" on port 80). */
  world: TestNetns;
  W1: string;
  /** A pod with `labels` and an HTTP server (named `name`) on each port of `serve`. */
  pod(name: string, labels: Record<string, string>, serve?: number[]): Promise<Endpoint>;
  /** Imports, then waits until every proxy worker has the new policy's connection (they start with the first L7 rule). */
  importL7(yaml: string): Promise<void>;
  /** Removes every policy (each test's teardown). */
  reset(): Promise<unknown>;
  /** http://<pod's IPv4>:port<p> */
  url(name: string, port: number, p: string): string;
  /** The membrane CLI against the file's agent (API and observer sockets). */
  cli(args: string[]): Promise<CliResult>;
}

export function l7HttpForFile(t: Test): L7HttpFile {
  let file: L7HttpFile | undefined;
  let agent: TestAgent | undefined;
  let world: TestWorld | undefined;
  const nss: TestNetns[] = [];
  const servers: ChildProcess[] = [];
  t.before(async () => {
    const a = await startAgent();
    agent = a;
    const pc = new PolicyClient(a.client);
    const eps: Record<string, Endpoint> = {};
    const nsOf: Record<string, TestNetns> = {};
    const pod = async (name: string, labels: Record<string, string>, serve: number[] = []) => {
      const ns = createNetns('mbl');
      nss.push(ns);
      const ep = await a.client.createEndpoint({
        containerId: `l7-${name}-${randomId()}`,
        netns: ns.path,
        ifName: 'eth0',
        labels,
      });
      eps[name] = ep;
      nsOf[name] = ns;
      for (const port of serve) servers.push(await startHttpServer(ns, port, name));
      return ep;
    };
    await pod('web', { app: 'storefront', tier: 'web' }, [8080, 80]);
    await pod('good', { app: 'checkout', stage: 'live' });
    await pod('bad', { app: 'crawler' });
    await pod('inv', { app: 'inventory' }, [80]);
    // The proxy talks to the world from the node's own address: the world routes everything back.
    world = await createWorld([10]);
    servers.push(await startHttpServer(world.ns, 80, 'world'));
    const importL7 = async (yaml: string) => {
      await pc.import(yaml);
      await l7WorkersConnected(a.client);
    };
    file = {
      agent: a,
      pc,
      eps,
      nsOf,
      world: world.ns,
      W1: world.ips[0],
      pod,
      importL7,
      reset: () => pc.delete('all'),
      url: (name, port, p) => `http://${ip4(eps[name])}:${port}${p}`,
      cli: (args) => membrane(args, { MEMBRANE_SOCKET: a.socket, MEMBRANE_OBSERVER_SOCKET: a.observerSocket }),
    };
  });
  t.teardown(async () => {
    killAll(servers);
    world?.remove();
    await agent?.cleanup();
    for (const ns of nss) ns.remove();
  });
  return standIn(() => file, 'the L7 HTTP test world');
}
