// npm run bench:netlink — not a test. Creating an endpoint's veth pair with the peer born in the pod's
// netns, through our libnl binding, against `ip link add ... netns` (iproute2, the peer everyone knows;
// its time includes starting the ip process) and the same call with the peer brought up in the netns
// (what the endpoint manager does). Interleaved rounds; medians and ratios.
import { execFileSync } from 'node:child_process';
import { openNetns, warmThreadPool } from '../../shared/src/netns/index.ts';
import { openNetlink } from '../../shared/src/netlink/index.ts';
import { createNetns } from '../../integration/lib/netns.ts';
import { randomId } from '../../integration/lib/agent.ts';
import { markdownTable, median } from './lib.ts';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const PER_ROUND = Number(process.env.BENCH_ITERATIONS ?? 20);

await warmThreadPool();
const pod = createNetns('mbb');
const hostIf = `mbb${randomId().slice(0, 8)}`;
const host = openNetlink();
const ns = openNetns(pod.path);
const del = () => {
  try {
    execFileSync('ip', ['link', 'del', hostIf], { stdio: 'ignore' });
  } catch {
    /* gone */
  }
};

const variants: { name: string; run(): void }[] = [
  {
    name: 'ip link add (iproute2 process)',
    run: () => execFileSync('ip', ['link', 'add', hostIf, 'up', 'type', 'veth', 'peer', 'name', 'eth1', 'netns', pod.path]),
  },
  {
    name: 'libnl vethAdd, peer in netns',
    run: () => host.vethAdd({ name: hostIf, up: true, peer: { name: 'eth1', netns: ns } }),
  },
  {
    name: 'libnl vethAdd, peer in netns and up',
    run: () => host.vethAdd({ name: hostIf, up: true, peer: { name: 'eth1', netns: ns, up: true } }),
  },
];
const samples = new Map<string, number[]>(variants.map((v) => [v.name, []]));
try {
  for (let round = 0; round < ROUNDS; round++) {
    for (const v of variants) {
      for (let i = 0; i < PER_ROUND; i++) {
        const t0 = process.hrtime.bigint();
        v.run();
        samples.get(v.name)!.push(Number(process.hrtime.bigint() - t0) / 1e6);
        del();
      }
    }
  }
  const base = median(samples.get(variants[0].name)!);
  console.log(
    markdownTable(
      ['veth pair, peer created in a netns', 'median (ms)', 'ratio'],
      variants.map((v) => {
        const m = median(samples.get(v.name)!);
        return [v.name, m.toFixed(3), `${(m / base).toFixed(2)}×`];
      }),
    ),
  );
  console.log(`\n${ROUNDS} interleaved rounds of ${PER_ROUND}; load: ${execFileSync('uptime').toString().trim()}`);
} finally {
  del();
  host.close();
  ns.close();
  pod.remove();
}
