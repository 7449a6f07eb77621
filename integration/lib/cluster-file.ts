// A test file's own cluster (the cluster-*.test.ts files each start one, so they run in parallel):
// started in t.before, removed in t.teardown together with the echo servers the file started.
import type { ChildProcess } from 'node:child_process';
import type { Test } from 'tap';
import { type ClusterOptions, startCluster, type TestCluster, type TestPod } from './cluster.ts';
import { knownOnOtherNodes } from './cluster-maps.ts';
import { killAll, startEchoServer } from './tcp.ts';

export interface FileCluster {
  /** The cluster, once t.before has started it (reading it earlier throws). */
  c: TestCluster;
  /** Processes the file's tests start (echo servers): killed at teardown. */
  servers: ChildProcess[];
  /** Every other node's ipcache has the pod (its address to its identity). */
  known(pod: TestPod): boolean;
  /** An echo server on the pod (all addresses), killed at teardown. */
  serve(pod: { ns: TestPod['ns'] }, port: number): Promise<void>;
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
  // The tests are declared before t.before runs: they hold this stand-in, which answers for the
  // started cluster.
  const c = new Proxy({} as TestCluster, {
    get(_, key) {
      if (!cluster) throw new Error('the cluster is not started yet (clusterForFile starts it in t.before)');
      return Reflect.get(cluster, key);
    },
  });
  return {
    c,
    servers,
    known: (pod) => knownOnOtherNodes(c, pod),
    serve: async (pod, port) => {
      servers.push(await startEchoServer(pod.ns, port, '::'));
    },
  };
}
