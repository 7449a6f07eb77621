// membrane-relay: one observer API over every node of a cluster (Hubble Relay's job). It finds the
// nodes in etcd (each node record says where its observer serves), asks each node's observer (TCP
// with TLS from the cluster CA, or a unix socket on the same machine), merges the answers by time and
// serves the same observer.Observer service, so `membrane observe --server` and `hubble observe
// --server` see the flows of all nodes. A separate executable, not an operator mode: any number of
// relays may serve at once (the operator is one leader), it only reads the cluster store, and it
// holds the client certificate the nodes' observers trust, which the operator has no use for.
import { Command } from 'commander';
import fs from 'node:fs';
import { createLogger } from '../log.ts';
import { VERSION } from '../version.ts';
import { connectEtcd } from '../kvstore/kv.ts';
import { kvstoreOptions, KvstoreConfigError, type KvstoreFlags } from '../kvstore/config.ts';
import { addKvstoreFlags, duration, runMain, stopOnSignal, wholeNumber } from '../kvstore/command.ts';
import { layout } from '../kvstore/layout.ts';
import { PeerSet } from './peers.ts';
import { RelayServer } from './server.ts';

interface Opts extends KvstoreFlags {
  clusterName: string;
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

const program = addKvstoreFlags(
  new Command('membrane-relay')
    .description("Membrane relay: the flows of every node of a cluster through one observer API (Hubble Relay's job)")
    .version(VERSION),
)
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
    duration('--sort-buffer-drain-timeout', 'ms'),
    250,
  )
  .option(
    '--sort-buffer-len-max <n>',
    'follow: flows held for ordering at most',
    wholeNumber('--sort-buffer-len-max', 1, 1_000_000),
    4096,
  )
  .option(
    '--peer-timeout <duration>',
    'how long a node may take to answer a request that ends',
    duration('--peer-timeout', 'ms'),
    10_000,
  )
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
  stopOnSignal(log, 'shutting down', async () => {
    await server.close().catch(() => undefined);
    await peers.stop().catch(() => undefined);
    kv.close();
  });
}

runMain('membrane-relay', main);
