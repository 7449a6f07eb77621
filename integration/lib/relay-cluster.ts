// The flow relay on the 3-node harness, shared by the cluster-relay*.test.ts files (each starts its
// own, so they run in parallel): n1 and n2 serve their observers over TCP with mutual TLS from a
// cluster CA made by scripts/cluster-certs.sh, n3 over its unix socket only; membrane-relay runs in
// the control-plane netns, finds the nodes in etcd and serves on a unix socket and on TCP with
// mutual TLS from the same CA.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ObserverClient } from '../../shared/src/flows/client.ts';
import type { Flow } from '../../shared/src/flows/types.ts';
import { REPO, randomId } from './agent.ts';
import { ownDir } from './cleanup.ts';
import { eventually, RELAY_MAIN, startCluster, type Proc, type TestCluster } from './cluster.ts';

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

export async function startRelayCluster(): Promise<RelayCluster> {
  const certs = fs.mkdtempSync(path.join(os.tmpdir(), `mbr-certs-${randomId(2)}-`));
  const releaseCerts = ownDir(certs);
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
