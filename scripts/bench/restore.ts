// npm run bench:restore (node --import tsx scripts/bench/restore.ts [--pods 200] [--policies 20]
// [--restarts 5] [--cpu-prof DIR] [--compile-cache-ab] [--keep-log FILE] [--json FILE]) — not a test. Where an agent restart after SIGKILL
// spends its time with many endpoints, without the minutes bench:scale spends creating pods through
// membrane-cni: the endpoints are created through the API (the same recipe), then the built agent
// (dist/bin/membrane-agent) is SIGKILLed and restarted --restarts times, a TCP flow between two pods
// checked across every restart. Reports the median time until the API answers and the median of
// each phase of the agent's startMs log. --cpu-prof DIR: one more restart runs under node
// --cpu-prof, its profile written to DIR. --compile-cache-ab: every other restart without the agent's
// V8 code cache (interleaved), reported apart.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO, startAgent } from '../../integration/lib/agent.ts';
import { createNetns, type TestNetns } from '../../integration/lib/netns.ts';
import { killAll, startEchoServer, startFlow } from '../../integration/lib/tcp.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { flagArg, markdownTable, median, numberArg, ringPolicies, sleep, stringArg } from './lib.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
delete process.env.NODE_OPTIONS;
const PODS = numberArg('pods', 200);
const POLICIES = numberArg('policies', 20);
const RESTARTS = numberArg('restarts', 5);
const CPU_PROF = stringArg('cpu-prof');
const JSON_OUT = stringArg('json');
/** Where to keep the agent's log (its state dir goes at the end). */
const KEEP_LOG = stringArg('keep-log');
/** Every other restart without the agent's V8 code cache (scripts/compile-cache-launcher.cjs). */
const CACHE_AB = flagArg('compile-cache-ab');
const log = (s: string) => process.stderr.write(`bench-restore: ${s}\n`);

function phaseText(p: Record<string, number[]>): string {
  return Object.entries(p)
    .map(([k, v]) => `${k} ${median(v)}`)
    .join(', ');
}

function dropCompileCache(): void {
  const bin = path.join(REPO, 'dist/bin');
  for (const f of fs.readdirSync(bin)) if (f.endsWith('.v8cache')) fs.rmSync(path.join(bin, f));
}

/** The phases of the last "membrane agent ready" line (startMs). */
function lastPhases(logFile: string): Record<string, number> {
  const ready = fs
    .readFileSync(logFile, 'utf8')
    .split('\n')
    .filter((l) => l.includes('"startMs"'))
    .at(-1);
  return ready ? ((JSON.parse(ready) as { startMs?: Record<string, number> }).startMs ?? {}) : {};
}

async function main(): Promise<void> {
  const load0 = os.loadavg()[0];
  const b = crypto.getRandomValues(new Uint8Array(2));
  const pool = `10.${64 + (b[0] % 64)}.${(b[1] % 16) * 16}.0/20`;
  const agent = await startAgent({ pools: [pool], bundle: true, extraArgs: ['--log-level', 'info'] });
  const nss: TestNetns[] = [];
  let server: Awaited<ReturnType<typeof startEchoServer>> | undefined;
  let flow: ReturnType<typeof startFlow> | undefined;
  const restores: number[] = [];
  const verified: number[] = [];
  const phases: Record<string, number[]> = {};
  const uncached: { ms: number[]; phases: Record<string, number[]> } = { ms: [], phases: {} };
  let flowOk = true;
  try {
    await new PolicyClient(agent.client).import(ringPolicies(POLICIES, 'restore', 8080));
    log(`creating ${PODS} endpoints through the API`);
    const ips: string[] = [];
    for (let i = 0; i < PODS; i++) {
      const ns = createNetns('mbrs');
      nss.push(ns);
      const ep = await agent.client.createEndpoint({
        containerId: `restore-${i}-${agent.id}`,
        netns: ns.path,
        ifName: 'eth0',
        labels: { app: `s${i % POLICIES}` },
      });
      ips.push(ep.ips[0].address.split('/')[0]);
    }
    // s1 -> s0 on 8080 is admitted by policy 0.
    server = await startEchoServer(nss[0], 8080);
    flow = startFlow(nss[1], ips[0], 8080);
    await sleep(1000);
    for (let r = 0; r < RESTARTS; r++) {
      const before = flow.echoed();
      await agent.kill9();
      const cold = CACHE_AB && r % 2 === 1;
      if (cold) dropCompileCache(); // the agent writes a new one once it is ready
      const t0 = performance.now();
      await agent.restart();
      const ms = performance.now() - t0;
      (cold ? uncached.ms : restores).push(ms);
      // The container sides are verified while the API serves (endpoint/restore.ts).
      while ((await agent.client.status()).verifyingEndpoints) await sleep(20);
      if (!cold) verified.push(performance.now() - t0);
      for (const [k, v] of Object.entries(lastPhases(agent.logFile))) ((cold ? uncached.phases : phases)[k] ??= []).push(v);
      if ((await agent.client.listEndpoints()).length !== PODS) throw new Error('the restarted agent lost endpoints');
      await sleep(500);
      if (!(before > 0 && flow.echoed() > before && !flow.failed())) flowOk = false;
      log(
        `restart ${r + 1}${cold ? ' (no code cache)' : ''}: ${ms.toFixed(0)} ms (${JSON.stringify(lastPhases(agent.logFile))})`,
      );
    }
    if (CPU_PROF) {
      // One more restart under --cpu-prof (not counted), on the same dirs; the profile is written
      // when it stops cleanly. Not the first start: the profiler's signals interrupt the BPF
      // verifier (EAGAIN), and a restart reuses the pinned programs.
      fs.mkdirSync(CPU_PROF, { recursive: true });
      await agent.kill9();
      const nodeArgs = ['--cpu-prof', `--cpu-prof-dir=${path.resolve(CPU_PROF)}`];
      const profiled = await startAgent({ reuse: agent, bundle: true, nodeArgs, extraArgs: ['--log-level', 'info'] });
      log(`profiled restart: ${JSON.stringify(lastPhases(agent.logFile))}`);
      await profiled.stop();
      await agent.restart();
    }
  } finally {
    flow?.stop();
    killAll([server]);
    if (KEEP_LOG) fs.copyFileSync(agent.logFile, KEEP_LOG);
    await agent.cleanup();
    for (const ns of nss) ns.remove();
  }
  const out = {
    pods: PODS,
    policies: POLICIES,
    restarts: RESTARTS,
    restoreMedianMs: median(restores),
    restoreMs: restores,
    verifiedMedianMs: median(verified),
    phasesMedianMs: Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, median(v)])),
    ...(CACHE_AB ? { uncachedRestoreMs: uncached.ms, uncachedPhasesMedianMs: phaseText(uncached.phases) } : {}),
    flowKeptThroughout: flowOk,
  };
  process.stdout.write(
    `\n${markdownTable(
      ['what', `${PODS} endpoints, ${POLICIES} policies, ${RESTARTS} restarts`],
      [
        ['restore after SIGKILL until the API answers, median (ms)', out.restoreMedianMs.toFixed(0)],
        ['every restart (ms)', restores.map((x) => x.toFixed(0)).join(', ')],
        ['until every container side is verified too, median (ms)', out.verifiedMedianMs.toFixed(0)],
        ['phases, median (ms, startMs log)', phaseText(phases)],
        ...(CACHE_AB
          ? [
              ['without the code cache: restore, median (ms)', median(uncached.ms).toFixed(0)],
              ['without the code cache: phases, median (ms)', phaseText(uncached.phases)],
            ]
          : []),
        ['TCP flow between two pods kept flowing through every restart', String(flowOk)],
      ],
    )}\n\nLoad average at the start: ${load0.toFixed(1)}, at the end: ${os.loadavg()[0].toFixed(1)} (${os.cpus().length} CPUs).\n`,
  );
  if (JSON_OUT) fs.writeFileSync(JSON_OUT, JSON.stringify(out, null, 1));
}

await main();
