// Which etcd v3 client the cluster store uses, by measurement (not a test): the `etcd3` npm package
// (on @grpc/grpc-js) against etcd's own protos loaded with @grpc/proto-loader and driven with grpc-js
// directly. Both talk to one real etcd on loopback; each variant runs in a fresh Node process per
// round, rounds interleaved. Measured: time to the first answer (module load + connect), serial put
// latency, pipelined put rate, watch delivery latency, a 10,000-key prefix read, and memory.
//   node --import tsx scripts/bench/etcd-client.ts [--rounds 3]
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { markdownTable, median, percentile, sleep } from './lib.ts';
import { startEtcd } from '../../integration/lib/etcd.ts';

type Variant = 'etcd3' | 'raw';
interface Result {
  firstAnswerMs: number;
  putP50Us: number;
  putP99Us: number;
  putsPerSec: number;
  watchP50Us: number;
  watchP99Us: number;
  prefix10kMs: number;
  rssMiB: number;
  heapMiB: number;
}

const require = createRequire(import.meta.url);

async function child(variant: Variant, endpoint: string, prefix: string): Promise<Result> {
  const t0 = performance.now();
  const c = variant === 'etcd3' ? etcd3Client(endpoint) : rawClient(endpoint);
  await c.put(`${prefix}/warm`, 'x');
  const firstAnswerMs = performance.now() - t0;
  const lat: number[] = [];
  for (let i = 0; i < 1000; i++) {
    const s = process.hrtime.bigint();
    await c.put(`${prefix}/serial/${i % 50}`, `v${i}`);
    lat.push(Number(process.hrtime.bigint() - s) / 1000);
  }
  const N = 10_000,
    inFlight = 128;
  let next = 0;
  const ts = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < N) {
        const i = next++;
        await c.put(`${prefix}/bulk/${String(i).padStart(5, '0')}`, JSON.stringify({ identity: 1000 + i, node: 'n1' }));
      }
    }),
  );
  const putsPerSec = N / ((performance.now() - ts) / 1000);
  const watchLat: number[] = [];
  await c.watch(`${prefix}/w/`, async (put) => {
    for (let i = 0; i < 300; i++) {
      const s = process.hrtime.bigint();
      const seen = put.next();
      await c.put(`${prefix}/w/${i}`, 'x');
      await seen;
      watchLat.push(Number(process.hrtime.bigint() - s) / 1000);
    }
  });
  const tp = performance.now();
  const n = await c.countPrefix(`${prefix}/bulk/`);
  const prefix10kMs = performance.now() - tp;
  if (n !== N) throw new Error(`read ${n} keys, wrote ${N}`);
  (globalThis as { gc?: () => void }).gc?.();
  const rssMiB = process.memoryUsage().rss / 2 ** 20;
  const heapMiB = process.memoryUsage().heapUsed / 2 ** 20;
  c.close();
  return {
    firstAnswerMs,
    putP50Us: percentile(lat, 0.5),
    putP99Us: percentile(lat, 0.99),
    putsPerSec,
    watchP50Us: percentile(watchLat, 0.5),
    watchP99Us: percentile(watchLat, 0.99),
    prefix10kMs,
    rssMiB,
    heapMiB,
  };
}

interface MiniClient {
  put(key: string, value: string): Promise<void>;
  countPrefix(prefix: string): Promise<number>;
  /** Calls fn once the watch is live; fn's put.next() resolves on the next event. */
  watch(prefix: string, fn: (put: { next(): Promise<void> }) => Promise<void>): Promise<void>;
  close(): void;
}

function etcd3Client(endpoint: string): MiniClient {
  const { Etcd3 } = require('etcd3');
  const client = new Etcd3({ hosts: endpoint });
  return {
    put: async (k, v) => {
      await client.put(k).value(v);
    },
    countPrefix: async (p) => (await client.getAll().prefix(p).keys()).length,
    async watch(prefix, fn) {
      const w = await client.watch().prefix(prefix).create();
      let waiter: (() => void) | undefined;
      w.on('put', () => {
        waiter?.();
      });
      await fn({
        next: () =>
          new Promise<void>((r) => {
            waiter = r;
          }),
      });
      await w.cancel();
    },
    close: () => client.close(),
  };
}

function rawClient(endpoint: string): MiniClient {
  const grpc = require('@grpc/grpc-js');
  const loader = require('@grpc/proto-loader');
  const protoDir = path.join(path.dirname(require.resolve('etcd3/package.json')), 'proto');
  const def = loader.loadSync(path.join(protoDir, 'rpc.proto'), {
    keepCase: false,
    longs: String,
    defaults: true,
    includeDirs: [protoDir],
  });
  const pb = grpc.loadPackageDefinition(def).etcdserverpb;
  const target = endpoint.replace(/^https?:\/\//, '');
  const creds = grpc.credentials.createInsecure();
  const kv = new pb.KV(target, creds);
  const watchClient = new pb.Watch(target, creds, { 'grpc.use_local_subchannel_pool': 0 });
  const call = <T>(fn: string, req: unknown) =>
    new Promise<T>((resolve, reject) => kv[fn](req, (e: Error | null, r: T) => (e ? reject(e) : resolve(r))));
  const end = (p: string) => {
    const b = Buffer.from(p);
    b[b.length - 1]++;
    return b;
  };
  return {
    put: async (k, v) => {
      await call('put', { key: Buffer.from(k), value: Buffer.from(v) });
    },
    countPrefix: async (p) => (await call<{ kvs: unknown[] }>('range', { key: Buffer.from(p), rangeEnd: end(p) })).kvs.length,
    async watch(prefix, fn) {
      const stream = watchClient.watch();
      let waiter: (() => void) | undefined;
      let created: (() => void) | undefined;
      const ready = new Promise<void>((r) => {
        created = r;
      });
      stream.on('data', (res: { created: boolean; events: unknown[] }) => {
        if (res.created) created?.();
        if (res.events?.length) waiter?.();
      });
      stream.write({ createRequest: { key: Buffer.from(prefix), rangeEnd: end(prefix) } });
      await ready;
      await fn({
        next: () =>
          new Promise<void>((r) => {
            waiter = r;
          }),
      });
      stream.end();
    },
    close: () => {
      kv.close();
      watchClient.close();
    },
  };
}

async function runChild(variant: Variant, endpoint: string, round: number): Promise<Result> {
  const out = execFileSync(
    process.execPath,
    ['--expose-gc', '--import', 'tsx', import.meta.filename, '--child', variant, endpoint, `/bench/${variant}/${round}`],
    {
      encoding: 'utf8',
      env: { ...process.env, NODE_EXTRA_CA_CERTS: '' },
      timeout: 300_000,
    },
  );
  return JSON.parse(out.trim().split('\n').pop()!);
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv[0] === '--child') {
    const r = await child(argv[1] as Variant, argv[2], argv[3]);
    process.stdout.write(JSON.stringify(r) + '\n');
    process.exit(0);
  }
  const rounds = Number(argv[argv.indexOf('--rounds') + 1] || 3) || 3;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-etcdbench-'));
  const etcd = await startEtcd({ dir });
  const results: Record<Variant, Result[]> = { etcd3: [], raw: [] };
  try {
    for (let r = 0; r < rounds; r++) {
      for (const v of (r % 2 ? ['raw', 'etcd3'] : ['etcd3', 'raw']) as Variant[]) {
        results[v].push(await runChild(v, etcd.clientUrl, r));
        await sleep(200);
      }
    }
  } finally {
    await etcd.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const m = (v: Variant, k: keyof Result) => median(results[v].map((x) => x[k]));
  const rows: [string, keyof Result, number][] = [
    ['first answer (load + connect), ms', 'firstAnswerMs', 0],
    ['serial put p50, µs', 'putP50Us', 0],
    ['serial put p99, µs', 'putP99Us', 0],
    ['pipelined puts/s (128 in flight)', 'putsPerSec', 0],
    ['watch delivery p50, µs', 'watchP50Us', 0],
    ['watch delivery p99, µs', 'watchP99Us', 0],
    ['read 10,000-key prefix, ms', 'prefix10kMs', 1],
    ['RSS after the run, MiB', 'rssMiB', 1],
    ['heap in use after GC, MiB', 'heapMiB', 1],
  ];
  console.log(
    `etcd client comparison, ${rounds} interleaved rounds, medians; load: ${os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
  );
  console.log(
    markdownTable(
      ['', 'etcd3 (npm)', 'etcd protos + grpc-js', 'etcd3 / raw'],
      rows.map(([name, k, d]) => [
        name,
        m('etcd3', k).toFixed(d),
        m('raw', k).toFixed(d),
        (m('etcd3', k) / m('raw', k)).toFixed(2),
      ]),
    ),
  );
}

if (process.argv[1] === import.meta.filename) await main();
