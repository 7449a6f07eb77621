// membrane-operator: the cluster-wide chores (pod CIDRs, garbage collection), one active instance
// per cluster chosen by leader election over an etcd lease; run two or more for takeover.
import os from 'node:os';
import { Command, InvalidArgumentError, Option } from 'commander';
import { createLogger } from '../log.ts';
import { VERSION } from '../version.ts';
import { connectEtcd } from '../kvstore/kv.ts';
import { kvstoreOptions, KvstoreConfigError } from '../kvstore/config.ts';
import { layout } from '../kvstore/layout.ts';
import { Election } from './leader.ts';
import { OperatorTasks } from './operator.ts';
import { PodCidrPool } from './podcidr.ts';

interface Opts {
  clusterName: string;
  kvstore?: string;
  kvstoreEndpoints?: string;
  kvstoreCa?: string;
  kvstoreCert?: string;
  kvstoreKey?: string;
  clusterPool?: string;
  nodeCidrMaskSize: number;
  clusterPoolIpv6?: string;
  nodeCidrMaskSizeIpv6: number;
  identityGcInterval: number;
  identityGcGrace: number;
  leaderLeaseTtl: number;
  id: string;
  logLevel: string;
}

const seconds = (flag: string) => (v: string) => {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(v);
  if (!m) throw new InvalidArgumentError(`${flag} "${v}" is not a duration (e.g. 500ms, 30s, 5m)`);
  const n = Number(m[1]);
  return m[2] === 'ms' ? n / 1000 : m[2] === 'm' ? n * 60 : n;
};
const int = (flag: string, min: number, max: number) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new InvalidArgumentError(`${flag} "${v}" must be a whole number from ${min} to ${max}`);
  return n;
};

const program = new Command('membrane-operator')
  .description('Membrane operator: pod CIDRs per node and garbage collection for a cluster (leader-elected)')
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
  .option('--cluster-pool <cidr>', 'IPv4 pool cut into per-node pod CIDRs')
  .option('--node-cidr-mask-size <n>', "prefix length of each node's IPv4 pod CIDR", int('--node-cidr-mask-size', 1, 30), 24)
  .option('--cluster-pool-ipv6 <cidr>', 'IPv6 pool cut into per-node pod CIDRs')
  .option(
    '--node-cidr-mask-size-ipv6 <n>',
    "prefix length of each node's IPv6 pod CIDR",
    int('--node-cidr-mask-size-ipv6', 1, 120),
    112,
  )
  .option(
    '--identity-gc-interval <duration>',
    'how often unreferenced identities are looked for',
    seconds('--identity-gc-interval'),
    60,
  )
  .option(
    '--identity-gc-grace <duration>',
    'how long an identity must be unreferenced before it is deleted',
    seconds('--identity-gc-grace'),
    300,
  )
  .option(
    '--leader-lease-ttl <seconds>',
    'leader lease TTL: a dead leader is replaced within about this long',
    int('--leader-lease-ttl', 2, 60),
    5,
  )
  .option('--id <name>', "this instance's name in the election", `${os.hostname()}-${process.pid}`)
  .option('--log-level <level>', 'trace|debug|info|warn|error', process.env.MEMBRANE_LOG_LEVEL ?? 'info')
  .showHelpAfterError();

async function main(): Promise<void> {
  program.parse();
  const o = program.opts<Opts>();
  let cfg;
  const pools: { ipv4?: PodCidrPool; ipv6?: PodCidrPool } = {};
  try {
    cfg = kvstoreOptions({ ...o, kvstore: o.kvstore ?? 'etcd' });
    if (!o.clusterPool && !o.clusterPoolIpv6)
      throw new KvstoreConfigError('--cluster-pool CIDR (or --cluster-pool-ipv6) is required: nodes get their pod CIDRs from it');
    if (o.clusterPool) pools.ipv4 = new PodCidrPool(o.clusterPool, o.nodeCidrMaskSize);
    if (o.clusterPoolIpv6) pools.ipv6 = new PodCidrPool(o.clusterPoolIpv6, o.nodeCidrMaskSizeIpv6);
    if (pools.ipv4 && pools.ipv4.family !== 4)
      throw new KvstoreConfigError(`--cluster-pool ${o.clusterPool} is not IPv4 (use --cluster-pool-ipv6)`);
    if (pools.ipv6 && pools.ipv6.family !== 6)
      throw new KvstoreConfigError(`--cluster-pool-ipv6 ${o.clusterPoolIpv6} is not IPv6`);
  } catch (e) {
    process.stderr.write(`membrane-operator: ${(e as Error).message}\n`);
    process.exit(2);
  }
  const log = createLogger({ level: o.logLevel, name: 'membrane-operator' });
  const L = layout(cfg!.cluster);
  const kv = await connectEtcd(cfg!.kv);
  const election = new Election({ kv, prefix: L.operatorLeader, id: o.id, ttlSeconds: o.leaderLeaseTtl, log });
  let tasks: OperatorTasks | undefined;
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stepping down');
    // Stepping down is a courtesy (the next leader takes over at once); never hang on it.
    setTimeout(() => process.exit(0), 3_000).unref();
    await tasks?.stop().catch(() => undefined);
    await election.stop().catch(() => undefined);
    kv.close();
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
  log.info(
    {
      cluster: cfg!.cluster,
      endpoints: cfg!.kv.endpoints,
      id: o.id,
      pools: Object.values(pools).map((p) => `${p!.text} /${p!.maskSize}`),
    },
    'membrane operator campaigning for leadership',
  );
  while (!stopping) {
    let lead;
    try {
      lead = await election.campaign();
    } catch {
      break;
    }
    log.info({ id: o.id }, 'elected leader');
    tasks = new OperatorTasks({
      kv,
      layout: L,
      guard: lead.guard,
      pools: { ...pools },
      identityGcIntervalMs: o.identityGcInterval * 1000,
      identityGcGraceMs: o.identityGcGrace * 1000,
      log,
    });
    try {
      await tasks.start();
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'could not start leader tasks');
    }
    const err = await lead.lost;
    log.warn({ err: err.message }, 'leadership lost; campaigning again');
    await tasks.stop();
    tasks = undefined;
    // Pools are re-read from the store by the next leader term.
    if (pools.ipv4) pools.ipv4 = new PodCidrPool(o.clusterPool!, o.nodeCidrMaskSize);
    if (pools.ipv6) pools.ipv6 = new PodCidrPool(o.clusterPoolIpv6!, o.nodeCidrMaskSizeIpv6);
  }
}

main().catch((err) => {
  process.stderr.write(`membrane-operator: ${(err as Error).message}\n`);
  process.exit(1);
});
