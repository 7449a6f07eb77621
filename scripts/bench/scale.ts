// npm run bench:scale (node --import tsx scripts/bench/scale.ts [--pods 1000] [--policies 100] [--quiet-ms 7000] [--json FILE])
// — not a test. Many pods on one agent (the built one, dist/bin/membrane-agent), through membrane-cni
// (the SEA, as a runtime runs it), with --policies policies selecting them:
//   ADD latency of the first 10 pods against the last 10; agent RSS per pod beyond the base;
//   `endpoint list` (API and CLI), a policy import touching every policy, and restore after SIGKILL
//   with all pods (time until the API answers), with a TCP flow between two pods checked throughout;
//   DEL of every pod, then a check that nothing is left (endpoints, addresses, links, routes, map
//   entries, store records) once the reaper is done.
// Pods get app=s<i % policies>; policy i selects app=s<i> and admits app=s<i+1> on 80/TCP, so every
// pod is selected and the identities are shared the way replicas share them.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO, startAgent, type TestAgent } from '../../integration/lib/agent.ts';
import { createNetns, type TestNetns } from '../../integration/lib/netns.ts';
import { nodeState, type NodeState } from '../../integration/lib/leaks.ts';
import { killAll, startEchoServer, startFlow } from '../../integration/lib/tcp.ts';
import { CNI_BIN, ensureCniBinary, invokeCni } from '../../cni/test/lib/exec.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { markdownTable, median, numberArg, ringPolicies, sleep, stringArg } from './lib.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
delete process.env.NODE_OPTIONS;
const PODS = numberArg('pods', 1000);
const POLICIES = numberArg('policies', 100);
const JSON_OUT = stringArg('json');
// RSS is read once the agent has been quiet this long: it gives memory back when idle (idle-memory.ts).
const QUIET_MS = numberArg('quiet-ms', 7000);
const log = (s: string) => process.stderr.write(`bench-scale: ${s}\n`);

/** A random /20 under 10.64.0.0/10 (4,094 addresses: room for the pods). */
function randomSubnet20(): string {
  const b = crypto.randomBytes(2);
  return `10.${64 + (b[0] % 64)}.${(b[1] % 16) * 16}.0/20`;
}

/** One membrane-cni call as a runtime makes it, the pod labelled app=`app`; resolves with its ms. */
async function cni(verb: 'ADD' | 'DEL', conf: object, cid: string, ns: string, app: string): Promise<number> {
  const r = await invokeCni(
    verb,
    { ...conf, args: { cni: { labels: [{ key: 'app', value: app }] } } },
    { containerId: cid, netns: ns, args: `IgnoreUnknown=1;K8S_POD_NAMESPACE=scale;K8S_POD_NAME=${cid}` },
  );
  if (r.code !== 0) throw new Error(`membrane-cni ${verb} ${cid}: ${r.stdout}`);
  return r.ms;
}

/** Where the last start went, by phase (the agent's "membrane agent ready" line, startMs). */
function startPhases(logFile: string): string {
  const ready = fs
    .readFileSync(logFile, 'utf8')
    .split('\n')
    .filter((l) => l.includes('"startMs"'))
    .at(-1);
  const phases = ready ? (JSON.parse(ready) as { startMs?: Record<string, number> }).startMs : undefined;
  return phases
    ? Object.entries(phases)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')
    : 'not logged';
}

const CLK_TCK = 100; // sysconf(_SC_CLK_TCK) on Linux
const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
const rssKiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);

async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t0 = performance.now();
  const v = await fn();
  return [performance.now() - t0, v];
}

function cliList(agent: TestAgent): void {
  execFileSync(path.join(REPO, 'dist/bin/membrane'), ['--socket', agent.socket, 'endpoint', 'list', '-o', 'json'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    maxBuffer: 1 << 28,
  });
}

async function main(): Promise<void> {
  ensureCniBinary();
  const load0 = os.loadavg()[0];
  const agent = await startAgent({ pools: [randomSubnet20()], bundle: true, extraArgs: ['--log-level', 'info'] });
  const conf = {
    cniVersion: '1.0.0',
    name: `scale-${agent.id}`,
    type: 'membrane-cni',
    agentSocket: agent.socket,
    stateDir: agent.stateDir,
  };
  const pc = new PolicyClient(agent.client);
  const nss: TestNetns[] = [];
  const added: { cid: string; ns: TestNetns; app: string }[] = [];
  const out: Record<string, number | string | boolean> = { pods: PODS, policies: POLICIES };
  let flowProcs: ReturnType<typeof startFlow> | undefined;
  let server: Awaited<ReturnType<typeof startEchoServer>> | undefined;
  try {
    await pc.import(ringPolicies(POLICIES, 'scale', 80));
    const empty: NodeState = await nodeState(agent);
    await sleep(QUIET_MS);
    const rss0 = rssKiB(agent.pid()!);
    const mem0 = (await agent.client.status()).memory;
    log(`creating ${PODS} netns`);
    for (let i = 0; i < PODS; i++) nss.push(createNetns('mbsc'));
    log(`ADD x${PODS} through ${CNI_BIN}`);
    const adds: number[] = [];
    // The agent's own CPU per ADD (what drifts with n, whatever else loads the machine): utime +
    // stime in clock ticks; its deferred work (conntrack revalidation) lands in the next ADD's.
    const agentCpuMs = () => {
      const f = fs.readFileSync(`/proc/${agent.pid()!}/stat`, 'utf8').split(') ')[1].split(' ');
      return ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK;
    };
    const cpus: number[] = [];
    for (const [i, ns] of nss.entries()) {
      const cid = `scale-${i}-${agent.id}`;
      const app = `s${i % POLICIES}`;
      const cpu0 = agentCpuMs();
      adds.push(await cni('ADD', conf, cid, ns.path, app));
      cpus.push(agentCpuMs() - cpu0);
      added.push({ cid, ns, app });
      if ((i + 1) % 100 === 0) log(`${i + 1} pods, last ADD ${adds[i].toFixed(0)} ms`);
    }
    await sleep(QUIET_MS);
    const rss1 = rssKiB(agent.pid()!);
    const mem1 = (await agent.client.status()).memory;
    const first = median(adds.slice(0, 10)),
      last = median(adds.slice(-10));
    Object.assign(out, {
      addFirst10Ms: first,
      addLast10Ms: last,
      addRatio: last / first,
      addCpuFirst10Ms: mean(cpus.slice(0, 10)),
      addCpuLast10Ms: mean(cpus.slice(-10)),
      rssBaseMiB: rss0 / 1024,
      rssMiB: rss1 / 1024,
      rssPerPodKiB: (rss1 - rss0) / PODS,
      heapUsedBaseMiB: (mem0?.heapUsedBytes ?? 0) / 2 ** 20,
      heapUsedMiB: (mem1?.heapUsedBytes ?? 0) / 2 ** 20,
      heapTotalMiB: (mem1?.heapTotalBytes ?? 0) / 2 ** 20,
      heapUsedPerPodKiB: ((mem1?.heapUsedBytes ?? 0) - (mem0?.heapUsedBytes ?? 0)) / 1024 / PODS,
      idleTrims: mem1?.idleTrims ?? 0,
    });

    const [listApiMs, listed] = await timed(() => agent.client.listEndpoints());
    if (listed.length !== PODS) throw new Error(`the agent lists ${listed.length} endpoints, expected ${PODS}`);
    const [listCliMs] = await timed(async () => cliList(agent));
    const [importMs, imported] = await timed(() => pc.import(ringPolicies(POLICIES, 'scale', 8080)));
    Object.assign(out, {
      endpointListApiMs: listApiMs,
      endpointListCliMs: listCliMs,
      policyImportMs: importMs,
      policyImportEnforcedMs: imported.enforcedMs,
    });

    // A flow between two pods that policy admits (s1 -> s0 on 8080 now), kept up across SIGKILL + restore.
    const ep = (i: number) => listed.find((e) => e.containerId === added[i].cid)!;
    server = await startEchoServer(added[0].ns, 8080);
    flowProcs = startFlow(added[1].ns, ep(0).ips[0].address.split('/')[0], 8080);
    await sleep(1000);
    const beforeKill = flowProcs.echoed();
    await agent.kill9();
    const t0 = performance.now();
    await agent.restart();
    const restoreMs = performance.now() - t0;
    // The container sides are verified while the API serves (endpoint/restore.ts): until then too.
    while ((await agent.client.status()).verifyingEndpoints) await sleep(20);
    const restoreVerifiedMs = performance.now() - t0;
    await sleep(1000);
    const flowOk = beforeKill > 0 && flowProcs.echoed() > beforeKill && !flowProcs.failed();
    Object.assign(out, {
      restoreMs,
      restoreVerifiedMs,
      flowSurvivedRestore: flowOk,
      restorePhases: startPhases(agent.logFile),
    });
    if ((await agent.client.listEndpoints()).length !== PODS) throw new Error('the restarted agent lost endpoints');
    flowProcs.stop();
    killAll([server]);

    log(`DEL x${PODS}`);
    const dels: number[] = [];
    for (const a of added.splice(0)) dels.push(await cni('DEL', conf, a.cid, a.ns.path, a.app));
    // Links and routes of the node's netns are shared with whatever else runs here: ours are named.
    const ours = new Set(listed.map((e) => e.hostIfName));
    const mine = (s: NodeState) => ({
      ...s,
      links: s.links.filter((l) => ours.has(l)),
      routes: s.routes.filter((r) => [...ours].some((l) => r.includes(` dev ${l}`))),
    });
    const want = JSON.stringify(mine(empty));
    let left = mine(await nodeState(agent));
    for (
      const deadline = Date.now() + 60_000;
      JSON.stringify(left) !== want && Date.now() < deadline;
      left = mine(await nodeState(agent))
    )
      await sleep(200);
    const clean = JSON.stringify(left) === want;
    Object.assign(out, { delMedianMs: median(dels), nothingLeft: clean });
    if (!clean) log(`left behind: ${JSON.stringify(left)} (before the pods: ${want})`);
  } finally {
    flowProcs?.stop();
    killAll([server]);
    for (const a of added) await cni('DEL', conf, a.cid, a.ns.path, a.app).catch(() => undefined);
    for (const ns of nss) ns.remove();
    await agent.cleanup();
  }
  const f = (n: unknown, d = 1) => (typeof n === 'number' ? n.toFixed(d) : String(n));
  process.stdout.write(
    `\n${markdownTable(
      ['what', `${PODS} pods, ${POLICIES} policies`, 'goal'],
      [
        [
          'ADD, median of the first 10 / last 10 (ms)',
          `${f(out.addFirst10Ms)} / ${f(out.addLast10Ms)} (${f(out.addRatio, 2)}×)`,
          '≤ 1.1×',
        ],
        [
          "agent CPU per ADD, mean of the first 10 / last 10 (ms; the agent's own work)",
          `${f(out.addCpuFirst10Ms)} / ${f(out.addCpuLast10Ms)}`,
          '',
        ],
        ['agent RSS: base / with all pods (MiB)', `${f(out.rssBaseMiB)} / ${f(out.rssMiB)}`, '≤ 150 MiB at 1,000 pods'],
        ['agent RSS per pod beyond the base (KiB)', f(out.rssPerPodKiB), '≤ 5 KiB'],
        [
          'agent V8 heap in use: base / with all pods (MiB; after its idle GC), per pod (KiB); V8 heap reserved with all pods (MiB)',
          `${f(out.heapUsedBaseMiB)} / ${f(out.heapUsedMiB)}, ${f(out.heapUsedPerPodKiB)}; ${f(out.heapTotalMiB)}`,
          '',
        ],
        ['endpoint list: API / CLI (ms)', `${f(out.endpointListApiMs)} / ${f(out.endpointListCliMs)}`, ''],
        [
          `policy import (${POLICIES} policies changed): API round trip / until enforced (ms)`,
          `${f(out.policyImportMs)} / ${f(out.policyImportEnforcedMs)}`,
          '',
        ],
        ['restore after SIGKILL until the API answers (ms)', f(out.restoreMs, 0), '< 2000 ms'],
        ['  until every container side is verified too (ms)', f(out.restoreVerifiedMs, 0), ''],
        ['  where the restarted agent spent it (ms, its startMs log)', String(out.restorePhases), ''],
        ['TCP flow between two pods kept flowing through it', String(out.flowSurvivedRestore), 'true'],
        ['DEL, median (ms)', f(out.delMedianMs), ''],
        ['nothing left after DEL of all (endpoints, addresses, links, routes, maps, records)', String(out.nothingLeft), 'true'],
      ],
    )}\n\nLoad average at the start: ${load0.toFixed(1)}, at the end: ${os.loadavg()[0].toFixed(1)} (${os.cpus().length} CPUs).\n`,
  );
  if (JSON_OUT) fs.writeFileSync(JSON_OUT, JSON.stringify(out, null, 1));
}

await main();
