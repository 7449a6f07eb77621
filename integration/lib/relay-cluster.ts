// The flow relay on the 3-node harness, shared by the cluster-relay*.test.ts files (each starts its
// own, so they run in parallel): n1 and n2 serve their observers over TCP with mutual TLS from a
// cluster CA made by scripts/cluster-certs.sh, n3 over its unix socket only; membrane-relay runs in
// the control-plane netns, finds the nodes in etcd and serves on a unix socket and on TCP with
// mutual TLS from the same CA.
import { execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ObserverClient } from '../../shared/src/flows/client.ts';
import type { Flow } from '../../shared/src/flows/types.ts';
import { REPO, randomId } from './agent.ts';
import { ownDir } from './cleanup.ts';
import type { Test } from 'tap';
import { eventually, RELAY_MAIN, startCluster, type Proc, type TestCluster, type TestPod } from './cluster.ts';
import { standIn } from './cluster-file.ts';
import { knownOnOtherNodes } from './cluster-maps.ts';
import { killAll } from './tcp.ts';

const CERTS = path.join(REPO, 'scripts/cluster-certs.sh');
/** The relay's TCP port in the control-plane netns (a netns of the test's own: no clash). */
export const RELAY_PORT = 4245;

export interface RelayCluster {
  c: TestCluster;
  relay: Proc;
  /** The relay's unix socket. */
  relaySocket: string;
  /** The cluster CA, node, relay and client certificates. */
  certs: string;
  cleanup(): Promise<void>;
}

/** A directory of our own for the cluster's certificates (and the relay's socket). */
function certsDir(): { certs: string; releaseCerts: () => void } {
  const certs = fs.mkdtempSync(path.join(os.tmpdir(), `mbr-certs-${randomId(2)}-`));
  return { certs, releaseCerts: ownDir(certs) };
}

export async function startRelayCluster(dir = certsDir()): Promise<RelayCluster> {
  const { certs, releaseCerts } = dir;
  const c = await startCluster({
    nodes: 3,
    // A killed agent's node stays in the cluster (unavailable, not gone) while the tests look at it.
    leaseTtl: 20,
    agentArgs: ({ name, ip, cluster }) => {
      if (name === 'n3') return []; // its observer only on its unix socket
      execFileSync('bash', [CERTS, certs, cluster, `${name}=${ip}`], { stdio: 'ignore' });
      return [
        '--observer-address',
        '0.0.0.0:4244',
        '--observer-tls-cert-file',
        path.join(certs, `${name}.pem`),
        '--observer-tls-key-file',
        path.join(certs, `${name}.key`),
        '--observer-tls-client-ca-files',
        path.join(certs, 'ca.pem'),
      ];
    },
  });
  const relaySocket = path.join(certs, 'relay.sock');
  const relay = c.spawnControl(
    [
      RELAY_MAIN,
      '--cluster-name',
      c.name,
      '--kvstore-endpoints',
      c.etcd.clientUrl,
      '--listen-socket',
      relaySocket,
      '--tls-ca-file',
      path.join(certs, 'ca.pem'),
      '--tls-client-cert-file',
      path.join(certs, 'relay.pem'),
      '--tls-client-key-file',
      path.join(certs, 'relay.key'),
      '--listen-address',
      `0.0.0.0:${RELAY_PORT}`,
      '--tls-server-cert-file',
      path.join(certs, 'relay.pem'),
      '--tls-server-key-file',
      path.join(certs, 'relay.key'),
      '--tls-server-client-ca-file',
      path.join(certs, 'ca.pem'),
      // A follow orders flows that reach the relay within this window (default 250 ms, as Hubble
      // Relay). On a loaded CI machine a node's flow can take longer to arrive (its ring reader, TLS),
      // which the follow's order check then saw as one flow out of order: 3 s covers that.
      '--sort-buffer-drain-timeout',
      '3s',
      '--log-level',
      'debug',
    ],
    'relay.log',
  );
  const cleanup = async () => {
    await relay.stop();
    await c.cleanup();
    fs.rmSync(certs, { recursive: true, force: true });
    releaseCerts();
  };
  try {
    await relay.start();
    await eventually(
      'the relay serves',
      async () => {
        const o = new ObserverClient(relaySocket);
        try {
          return (await o.healthCheck(1000)) === 'SERVING';
        } finally {
          o.close();
        }
      },
      60_000,
      250,
    );
  } catch (e) {
    await cleanup();
    throw e;
  }
  return { c, relay, relaySocket, certs, cleanup };
}

/** The `membrane` CLI (from the test's netns). */
export const cli = (...args: string[]) =>
  execFileSync(process.execPath, ['--import', 'tsx', path.join(REPO, 'shared/src/cli/main.ts'), ...args], {
    encoding: 'utf8',
    cwd: REPO,
    env: { ...process.env, NODE_EXTRA_CA_CERTS: '' },
  });

export const isSyn = (f: Flow) => !!f.l4?.TCP?.flags?.SYN && !f.l4.TCP.flags.ACK;

export interface FileRelayCluster {
  /** The cluster, once t.before has started it. */
  c: TestCluster;
  relaySocket: string;
  certs: string;
  /** Processes the file's tests start (echo servers): killed at teardown. */
  servers: ChildProcess[];
  /** Every other node's ipcache has the pod. */
  known(pod: TestPod): boolean;
  relayClient(): ObserverClient;
}

/** A test file's own relay cluster: started in t.before, removed in t.teardown with its servers. */
export function relayClusterForFile(t: Test): FileRelayCluster {
  const dir = certsDir();
  const relaySocket = path.join(dir.certs, 'relay.sock');
  let rc: RelayCluster | undefined;
  const servers: ChildProcess[] = [];
  t.before(async () => {
    rc = await startRelayCluster(dir);
  });
  t.teardown(async () => {
    killAll(servers);
    if (rc) await rc.cleanup();
    else {
      fs.rmSync(dir.certs, { recursive: true, force: true });
      dir.releaseCerts();
    }
  });
  const c = standIn(() => rc?.c, 'the relay cluster');
  return {
    c,
    relaySocket,
    certs: dir.certs,
    servers,
    known: (pod) => knownOnOtherNodes(c, pod),
    relayClient: () => new ObserverClient(relaySocket),
  };
}
