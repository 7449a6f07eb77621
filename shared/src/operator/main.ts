// membrane-operator: the cluster-wide chores (pod CIDRs, garbage collection), one active instance
// per cluster chosen by leader election over an etcd lease; run two or more for takeover.
import os from 'node:os';
import { Command } from 'commander';
import { createLogger } from '../log.ts';
import { VERSION } from '../version.ts';
import { connectEtcd } from '../kvstore/kv.ts';
import { kvstoreOptions, KvstoreConfigError, type KvstoreFlags } from '../kvstore/config.ts';
import { addKvstoreFlags, duration, runMain, stopOnSignal, wholeNumber } from '../kvstore/command.ts';
import { layout } from '../kvstore/layout.ts';
import { Election } from './leader.ts';
import { OperatorTasks } from './operator.ts';
import { PodCidrPool } from './podcidr.ts';

interface Opts extends KvstoreFlags {
  clusterName: string;
  clusterPool?: string;
  nodeCidrMaskSize: number;
  clusterPoolIpv6?: string;
  nodeCidrMaskSizeIpv6: number;
  identityGcInterval: number;
  identityGcGrace: number;
  podCidrQuarantine: number;
  leaderLeaseTtl: number;
  id: string;
  logLevel: string;
}

const program = addKvstoreFlags(
  new Command('membrane-operator')
    .description('Membrane operator: pod CIDRs per node and garbage collection for a cluster (leader-elected)')
    .version(VERSION),
)
  .option('--cluster-pool <cidr>', 'IPv4 pool cut into per-node pod CIDRs')
  .option(
    '--node-cidr-mask-size <n>',
    "prefix length of each node's IPv4 pod CIDR",
    wholeNumber('--node-cidr-mask-size', 1, 30),
    24,
  )
  .option('--cluster-pool-ipv6 <cidr>', 'IPv6 pool cut into per-node pod CIDRs')
  .option(
    '--node-cidr-mask-size-ipv6 <n>',
    "prefix length of each node's IPv6 pod CIDR",
    wholeNumber('--node-cidr-mask-size-ipv6', 1, 120),
    112,
  )
  .option(
    '--identity-gc-interval <duration>',
    'how often unreferenced identities are looked for',
    duration('--identity-gc-interval', 's'),
    60,
  )
  .option(
    '--identity-gc-grace <duration>',
    'how long an identity must be unreferenced before it is deleted',
    duration('--identity-gc-grace', 's'),
    300,
  )
  .option(
    '--pod-cidr-quarantine <duration>',
    "how long a gone node's pod CIDR stays unused once the store has no endpoint in it (other nodes may still map its addresses)",
    duration('--pod-cidr-quarantine', 's'),
    60,
  )
  .option(
    '--leader-lease-ttl <seconds>',
    'leader lease TTL: a dead leader is replaced within about this long',
    wholeNumber('--leader-lease-ttl', 2, 60),
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
  // Stepping down is a courtesy: the next leader takes over at once.
  const stopping = stopOnSignal(log, 'stepping down', async () => {
    await tasks?.stop().catch(() => undefined);
    await election.stop().catch(() => undefined);
    kv.close();
  });
  log.info(
    {
      cluster: cfg!.cluster,
      endpoints: cfg!.kv.endpoints,
      id: o.id,
      pools: Object.values(pools).map((p) => `${p!.text} /${p!.maskSize}`),
    },
    'membrane operator campaigning for leadership',
  );
  while (!stopping()) {
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
      podCidrQuarantineMs: o.podCidrQuarantine * 1000,
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

runMain('membrane-operator', main);
