// membrane-relay: one observer API over every node of a cluster (Hubble Relay's job). It finds the
// nodes in etcd (each node record says where its observer serves), asks each node's observer (TCP
// with TLS from the cluster CA, or a unix socket on the same machine), merges the answers by time and
// serves the same observer.Observer service, so `membrane observe --server` and `hubble observe
// --server` see the flows of all nodes. A separate executable, not an operator mode: any number of
// relays may serve at once (the operator is one leader), it only reads the cluster store, and it
// holds the client certificate the nodes' observers trust, which the operator has no use for.
import { Command, InvalidArgumentError, Option } from 'commander';
import fs from 'node:fs';
import { createLogger } from '../log.ts';
import { VERSION } from '../version.ts';
import { connectEtcd } from '../kvstore/kv.ts';
import { kvstoreOptions, KvstoreConfigError } from '../kvstore/config.ts';
import { layout } from '../kvstore/layout.ts';
import { PeerSet } from './peers.ts';
import { RelayServer } from './server.ts';

interface Opts {
  clusterName: string;
  kvstore?: string;
  kvstoreEndpoints?: string;
  kvstoreCa?: string;
  kvstoreCert?: string;
  kvstoreKey?: string;
  listenSocket?: string;
  listenAddress?: string;
  tlsCaFile?: string;
  tlsClientCertFile?: string;
  tlsClientKeyFile?: string;
  tlsServerCertFile?: string;
  tlsServerKeyFile?: string;
  tlsServerClientCaFile?: string;
  sortBufferDrainTimeout: number;
  sortBufferLenMax: number;
  peerTimeout: number;
  logLevel: string;
}

const ms = (flag: string) => (v: string) => {
  const m = /^(\d+(?:\.\d+)?)(ms|s)?$/.exec(v);
  if (!m) throw new InvalidArgumentError(`${flag} "${v}" is not a duration (e.g. 250ms, 2s)`);
  return m[2] === 's' ? Number(m[1]) * 1000 : Number(m[1]);
};
const int = (flag: string, min: number, max: number) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new InvalidArgumentError(`${flag} "${v}" must be a whole number from ${min} to ${max}`);
  return n;
};

const program = new Command('membrane-relay')
  .description("Membrane relay: the flows of every node of a cluster through one observer API (Hubble Relay's job)")
  .version(VERSION)
  .option('--cluster-name <name>', 'cluster name (env MEMBRANE_CLUSTER_NAME)', process.env.MEMBRANE_CLUSTER_NAME ?? 'default')
  .addOption(new Option('--kvstore <type>', 'cluster store').choices(['etcd']).default('etcd'))
  .option(
    '--kvstore-endpoints <urls>',
    'etcd client URLs, comma-separated (env MEMBRANE_KVSTORE_ENDPOINTS)',
    process.env.MEMBRANE_KVSTORE_ENDPOINTS,
  )
  .option('--kvstore-ca <file>', 'CA bundle for https endpoints')
  .option('--kvstore-cert <file>', 'client certificate')
  .option('--kvstore-key <file>', 'client key')
  .option('--listen-socket <path>', 'serve the observer API on this unix socket', '/run/membrane/relay.sock')
  .option('--listen-address <host:port>', 'also serve it on TCP (Hubble Relay uses :4245)')
  .option('--tls-ca-file <file>', "the cluster CA the nodes' observer certificates come from (scripts/cluster-certs.sh)")
  .option('--tls-client-cert-file <file>', "the relay's client certificate for the nodes' observers")
  .option('--tls-client-key-file <file>', 'its key')
  .option('--tls-server-cert-file <file>', "TLS on --listen-address: the relay's server certificate")
  .option('--tls-server-key-file <file>', 'its key')
  .option('--tls-server-client-ca-file <file>', 'with TLS on --listen-address: clients must show a certificate this CA signed')
  .option(
    '--sort-buffer-drain-timeout <duration>',
    'follow: how long a flow waits for older ones from other nodes',
    ms('--sort-buffer-drain-timeout'),
    250,
  )
  .option(
    '--sort-buffer-len-max <n>',
    'follow: flows held for ordering at most',
    int('--sort-buffer-len-max', 1, 1_000_000),
    4096,
  )
  .option('--peer-timeout <duration>', 'how long a node may take to answer a request that ends', ms('--peer-timeout'), 10_000)
  .option('--log-level <level>', 'trace|debug|info|warn|error', process.env.MEMBRANE_LOG_LEVEL ?? 'info')
  .showHelpAfterError();

function read(flag: string, file: string | undefined): Buffer | undefined {
  if (!file) return undefined;
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new KvstoreConfigError(`${flag} ${file}: ${(e as Error).message}`);
  }
}

async function main(): Promise<void> {
  program.parse();
  const o = program.opts<Opts>();
  let cfg;
  let peerTls: { ca: Buffer; cert?: Buffer; key?: Buffer } | undefined;
  let serverTls: { cert: Buffer; key: Buffer; clientCa?: Buffer } | undefined;
  try {
    cfg = kvstoreOptions({ ...o, kvstore: o.kvstore ?? 'etcd' });
    if (!o.listenSocket && !o.listenAddress)
      throw new KvstoreConfigError('give --listen-socket PATH or --listen-address HOST:PORT');
    const ca = read('--tls-ca-file', o.tlsCaFile);
    const cert = read('--tls-client-cert-file', o.tlsClientCertFile);
    const key = read('--tls-client-key-file', o.tlsClientKeyFile);
    if (!!cert !== !!key) throw new KvstoreConfigError('--tls-client-cert-file and --tls-client-key-file go together');
    if (cert && !ca)
      throw new KvstoreConfigError("--tls-client-cert-file needs --tls-ca-file (the CA the nodes' certificates come from)");
    if (ca) peerTls = { ca, ...(cert ? { cert, key } : {}) };
    const sCert = read('--tls-server-cert-file', o.tlsServerCertFile);
    const sKey = read('--tls-server-key-file', o.tlsServerKeyFile);
    if (!!sCert !== !!sKey) throw new KvstoreConfigError('--tls-server-cert-file and --tls-server-key-file go together');
    if (sCert && !o.listenAddress) throw new KvstoreConfigError('--tls-server-* secure --listen-address: give it too');
    const sCa = read('--tls-server-client-ca-file', o.tlsServerClientCaFile);
    if (sCert) serverTls = { cert: sCert, key: sKey!, ...(sCa ? { clientCa: sCa } : {}) };
  } catch (e) {
    process.stderr.write(`membrane-relay: ${(e as Error).message}\n`);
    process.exit(2);
  }
  const log = createLogger({ level: o.logLevel, name: 'membrane-relay' });
  const kv = await connectEtcd(cfg!.kv);
  const peers = new PeerSet({
    kv,
    layout: layout(cfg!.cluster),
    cluster: cfg!.cluster,
    ...(peerTls ? { tls: peerTls } : {}),
    log,
  });
  await peers.start();
  const server = await RelayServer.start({
    peers,
    cluster: cfg!.cluster,
    version: VERSION,
    socket: o.listenSocket,
    address: o.listenAddress,
    ...(serverTls ? { tls: serverTls } : {}),
    sortWindowMs: o.sortBufferDrainTimeout,
    sortMaxLen: o.sortBufferLenMax,
    peerTimeoutMs: o.peerTimeout,
  });
  log.info(
    {
      cluster: cfg!.cluster,
      socket: server.socket,
      address: server.address,
      nodes: peers.list().map((p) => `${p.name}=${p.address}`),
    },
    'membrane relay ready',
  );
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down');
    setTimeout(() => process.exit(0), 3_000).unref();
    await server.close().catch(() => undefined);
    await peers.stop().catch(() => undefined);
    kv.close();
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

main().catch((err) => {
  process.stderr.write(`membrane-relay: ${(err as Error).message}\n`);
  process.exit(1);
});
