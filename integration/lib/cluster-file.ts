// A test file's own cluster (the cluster-*.test.ts files each start one, so they run in parallel):
// started in t.before, removed in t.teardown together with the echo servers the file started.
import type { ChildProcess } from 'node:child_process';
import type { Test } from 'tap';
import { type ClusterOptions, startCluster, type TestCluster, type TestPod } from './cluster.ts';
import { knownOnOtherNodes } from './cluster-maps.ts';
import { eventually } from './proc.ts';
import { handshake, probe } from './probe.ts';
import { killAll, startEchoServer } from './tcp.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';

export interface FileCluster {
  /** The cluster, once t.before has started it (reading it earlier throws). */
  c: TestCluster;
  /** Processes the file's tests start (echo servers): killed at teardown. */
  servers: ChildProcess[];
  /** Every other node's ipcache has the pod (its address to its identity). */
  known(pod: TestPod): boolean;
  /** An echo server on the pod (all addresses), killed at teardown. */
  serve(pod: { ns: TestPod['ns'] }, port: number): Promise<void>;
  /** Where the cluster-native-* attacks start: `web` serves `port`, every pod of `pods` is known on
   *  the other nodes, `policy` is imported (through the first node: the store shares it) and has
   *  reached the datapath: `denied` cannot complete a handshake to web, `admitted` connects, and
   *  `also` (when given) holds. */
  enforce(o: EnforceSetup): Promise<void>;
}

export interface EnforceSetup {
  policy: string;
  web: TestPod;
  port: number;
  admitted: TestPod;
  denied: TestPod;
  pods: TestPod[];
  also?: () => Promise<boolean>;
}

export function clusterForFile(t: Test, opts: ClusterOptions): FileCluster {
  let cluster: TestCluster | undefined;
  const servers: ChildProcess[] = [];
  t.before(async () => {
    cluster = await startCluster(opts);
  });
  t.teardown(async () => {
    killAll(servers);
    await cluster?.cleanup();
  });
  const c = standIn(() => cluster, 'the cluster');
  const known = (pod: TestPod) => knownOnOtherNodes(c, pod);
  const serve = async (pod: { ns: TestPod['ns'] }, port: number) => {
    servers.push(await startEchoServer(pod.ns, port, '::'));
  };
  const enforce = async ({ policy, web, port, admitted, denied, pods, also }: EnforceSetup) => {
    await serve(web, port);
    await eventually('pods known', () => pods.every(known), 20_000);
    await new PolicyClient(c.nodes[0].client).import(policy);
    await eventually(
      'enforced',
      async () =>
        (await handshake(denied.ns, web.ip4, port)) === 'timeout' &&
        (await probe(admitted.ns, web.ip4, port)) === 'ok' &&
        (!also || (await also())),
      20_000,
      200,
    );
  };
  return { c, servers, known, serve, enforce };
}

/** What t.before starts, for tests declared before it runs: a stand-in that answers for the object
 *  once it exists (reading it earlier throws, naming `what`). */
export function standIn<T extends object>(get: () => T | undefined, what: string): T {
  return new Proxy({} as T, {
    get(_, key) {
      const real = get();
      if (!real) throw new Error(`${what} is not started yet (t.before starts it)`);
      return Reflect.get(real, key);
    },
  });
}
