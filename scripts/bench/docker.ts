// npm run bench:docker — not a test. `docker run --rm` until the container's first successful ping,
// on a membrane network vs a network of Docker's own bridge driver, interleaved in one run against one
// private dockerd (the agent hosts the plugin). Each run: a new container pings a peer container of its
// network in a loop and prints a marker on the first reply; we time spawn -> marker ("first ping") and
// spawn -> exit ("total", includes --rm teardown). Also the plugin's own CreateEndpoint/Join/
// DeleteEndpoint handling time, and how long endpoints were held down waiting for their labels (what
// labels-before-the-first-packet adds), from the agent's debug log. Prints a markdown table.
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import { startDockerd, type Dockerd } from '../../integration/lib/dockerd.ts';
import { ensureBusyboxImage } from '../../integration/lib/bbimage.ts';
import { startPluginAgent, dockerSubnet, type PluginAgent } from '../../integration/lib/docker-env.ts';
import { markdownTable, median, percentile } from './lib.ts';

const RUNS = Number(process.env.BENCH_RUNS ?? 15);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 2);
const MARK = 'FIRST-PING-OK';
delete process.env.NODE_EXTRA_CA_CERTS;

interface Sample {
  firstPing: number;
  total: number;
}

/** One `docker run --rm`, timed from spawn to the marker and to exit. */
function timedRun(d: Dockerd, network: string, image: string, peer: string): Promise<Sample> {
  const script = `until ping -c 1 -W 1 ${peer} >/dev/null 2>&1; do :; done; echo ${MARK}`;
  return new Promise((resolve, reject) => {
    const started = performance.now();
    let firstPing = 0,
      out = '',
      err = '';
    const p = spawn('docker', ['run', '--rm', '--network', network, image, 'sh', '-c', script], { env: d.env });
    const timer = setTimeout(() => p.kill('SIGKILL'), 60_000);
    p.stdout.on('data', (c) => {
      out += c;
      if (!firstPing && out.includes(MARK)) firstPing = performance.now() - started;
    });
    p.stderr.on('data', (c) => {
      err += c;
    });
    p.on('close', (code) => {
      clearTimeout(timer);
      const total = performance.now() - started;
      if (code !== 0 || !firstPing) reject(new Error(`docker run on ${network} failed (exit ${code}): ${err.trim()}`));
      else resolve({ firstPing, total });
    });
  });
}

/** Handling times of plugin calls logged by the agent (debug "plugin call" lines) since `fromByte`. */
function pluginCallTimes(logFile: string, fromByte: number): Map<string, number[]> {
  const out = new Map<string, number[]>();
  const text = fs.readFileSync(logFile, 'utf8').slice(fromByte);
  for (const line of text.split('\n')) {
    if (!line.includes('"plugin call"')) continue;
    try {
      const j = JSON.parse(line) as { call?: string; ms?: number; msg?: string };
      if (j.msg === 'plugin call' && j.call && typeof j.ms === 'number') out.set(j.call, [...(out.get(j.call) ?? []), j.ms]);
    } catch {
      /* not JSON */
    }
  }
  return out;
}

/** How long membrane endpoints were held down waiting for their labels from the Docker API (debug
 *  "labels arrived: link up" lines): what labels-before-the-first-packet adds to a `docker run`. */
function labelHoldTimes(logFile: string, fromByte: number): number[] {
  const out: number[] = [];
  for (const line of fs.readFileSync(logFile, 'utf8').slice(fromByte).split('\n')) {
    if (!line.includes('"labels arrived: link up"')) continue;
    try {
      const j = JSON.parse(line) as { heldMs?: number };
      if (typeof j.heldMs === 'number') out.push(j.heldMs);
    } catch {
      /* not JSON */
    }
  }
  return out;
}

async function main(): Promise<void> {
  const d = await startDockerd();
  let pa: PluginAgent | undefined;
  const containers: string[] = [];
  const networks: string[] = [];
  try {
    const image = await ensureBusyboxImage(d);
    pa = await startPluginAgent(d);
    const sm = dockerSubnet(),
      sb = dockerSubnet();
    const nets = { membrane: `bench-mbr-${pa.plugin}`, bridge: `bench-br-${pa.plugin}` };
    await d.docker(['network', 'create', '-d', pa.plugin, '--subnet', sm.cidr, nets.membrane]);
    networks.push(nets.membrane);
    await d.docker(['network', 'create', '-d', 'bridge', '--subnet', sb.cidr, nets.bridge]);
    networks.push(nets.bridge);
    const peers: Record<string, string> = {};
    for (const [kind, net] of Object.entries(nets)) {
      const name = `bench-peer-${kind}-${pa.plugin}`;
      await d.docker(['run', '-d', '--name', name, '--network', net, image, 'sleep', '3600']);
      containers.push(name);
      peers[kind] = (await d.docker(['inspect', '-f', `{{(index .NetworkSettings.Networks "${net}").IPAddress}}`, name])).trim();
    }
    const samples: Record<string, Sample[]> = { membrane: [], bridge: [] };
    const logStart = fs.statSync(pa.agent.logFile).size;
    for (let i = 0; i < WARMUP + RUNS; i++) {
      // Alternate which goes first, so a trend in machine load hits both equally.
      const order = i % 2 === 0 ? ['membrane', 'bridge'] : ['bridge', 'membrane'];
      for (const kind of order) {
        const s = await timedRun(d, nets[kind as keyof typeof nets], image, peers[kind]);
        if (i >= WARMUP) samples[kind].push(s);
        process.stderr.write(
          `${i < WARMUP ? `warm-up ${i + 1}` : `run ${i + 1 - WARMUP}`} ${kind}: first ping ${s.firstPing.toFixed(0)} ms, total ${s.total.toFixed(0)} ms\n`,
        );
      }
    }
    const fmt = (xs: number[]) => `${median(xs).toFixed(0)} (p90 ${percentile(xs, 0.9).toFixed(0)})`;
    const m = samples.membrane,
      b = samples.bridge;
    const ratio = (f: (s: Sample) => number) => (median(m.map(f)) / median(b.map(f))).toFixed(2) + '×';
    const table = markdownTable(
      [`docker run --rm, ms (median of ${RUNS}, interleaved)`, 'membrane', 'Docker bridge', 'membrane / bridge'],
      [
        [
          'spawn → first successful ping',
          fmt(m.map((s) => s.firstPing)),
          fmt(b.map((s) => s.firstPing)),
          ratio((s) => s.firstPing),
        ],
        ['spawn → exit (incl. --rm teardown)', fmt(m.map((s) => s.total)), fmt(b.map((s) => s.total)), ratio((s) => s.total)],
      ],
    );
    const calls = pluginCallTimes(pa.agent.logFile, logStart);
    const callRows = ['NetworkDriver.CreateEndpoint', 'NetworkDriver.Join', 'NetworkDriver.Leave', 'NetworkDriver.DeleteEndpoint']
      .filter((c) => calls.get(c)?.length)
      .map((c) => [c, median(calls.get(c)!).toFixed(1), percentile(calls.get(c)!, 0.9).toFixed(1), String(calls.get(c)!.length)]);
    const held = labelHoldTimes(pa.agent.logFile, logStart);
    if (held.length)
      callRows.push([
        'link held down from CreateEndpoint until the Docker API told the labels (upper bound of what it adds)',
        median(held).toFixed(1),
        percentile(held, 0.9).toFixed(1),
        String(held.length),
      ]);
    const callTable = markdownTable(['plugin call (handled in the agent)', 'median ms', 'p90 ms', 'n'], callRows);
    process.stdout.write(`\n${table}\n\n${callTable}\n`);
  } finally {
    if (containers.length) await d.dockerTry(['rm', '-f', ...containers]);
    for (const n of networks) await d.dockerTry(['network', 'rm', n]);
    await pa?.agent.cleanup().catch(() => undefined);
    if (pa) fs.rmSync(pa.socketPath, { force: true });
    await d.destroy();
  }
}

main().catch((e) => {
  process.stderr.write(`bench:docker failed: ${(e as Error).stack ?? e}\n`);
  process.exitCode = 1;
});
