// Soak (not a test, not timed): N ADD/DEL cycles through the real membrane-cni against an agent in a
// node netns of ours, with traffic from each pod, the agent SIGKILLed about every --kill-agent-every
// operations (and restarted, as systemd would) and plugin processes SIGKILLed at random, the runtime's
// retries as kubelet does them (a failed ADD is followed by DELs until one succeeds; a killed DEL is
// retried). At the end, once the DEL queue has drained: zero leaked endpoints, addresses, links,
// routes, datapath map entries or store records (integration/lib/leaks.ts). Exit 1 on any leak.
//   node --import tsx scripts/bench/soak.ts [--cycles 10000] [--concurrency 4] [--kill-agent-every 500]
//                                           [--kill-plugin 0.03] [--json FILE]
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { randomId } from '../../integration/lib/agent.ts';
import { startNode, type TestNode } from '../../integration/lib/node-netns.ts';
import { createNetns, ping, type TestNetns } from '../../integration/lib/netns.ts';
import { nodeState, type NodeState } from '../../integration/lib/leaks.ts';
import { CNI_BIN, ensureCniBinary, runtimeEnv } from '../../cni/test/lib/exec.ts';
import { listPendingDeletes, pendingDeletesDir } from '../../shared/src/pending-deletes/index.ts';
import { numberArg, percentile, sleep, stringArg } from './lib.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
delete process.env.NODE_OPTIONS;
const CYCLES = numberArg('cycles', 10_000);
const CONCURRENCY = numberArg('concurrency', 4);
const KILL_AGENT_EVERY = numberArg('kill-agent-every', 500);
const KILL_PLUGIN = numberArg('kill-plugin', 0.03);
const JSON_OUT = stringArg('json');
const log = (s: string) => process.stderr.write(`soak: ${s}\n`);

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: any;
  ms: number;
}

/** membrane-cni as libcni runs it; with `killAfterMs` the plugin is SIGKILLed at that moment. */
function cni(verb: string, conf: object, containerId: string, netns: string, killAfterMs?: number): Promise<Run> {
  const env = runtimeEnv({
    CNI_COMMAND: verb,
    CNI_CONTAINERID: containerId,
    CNI_NETNS: netns,
    CNI_IFNAME: 'eth0',
    CNI_ARGS: `K8S_POD_NAMESPACE=soak;K8S_POD_NAME=${containerId}`,
    CNI_PATH: '/usr/lib/cni',
  });
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(CNI_BIN, [], { env, stdio: ['pipe', 'pipe', 'ignore'] });
    let stdout = '';
    child.stdout.on('data', (c) => {
      stdout += c;
    });
    child.on('error', reject);
    const killer = killAfterMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    child.on('close', (code, signal) => {
      clearTimeout(killer);
      let out: any;
      try {
        out = stdout ? JSON.parse(stdout) : undefined;
      } catch {
        out = stdout;
      }
      resolve({ code, signal, out, ms: performance.now() - t0 });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(JSON.stringify(conf));
  });
}

const stats = {
  cycles: 0,
  addOk: 0,
  addFailed: 0,
  addKilled: 0,
  delKilled: 0,
  delRetries: 0,
  trafficOk: 0,
  trafficFailed: 0,
  agentKills: 0,
  addMs: [] as number[],
  delMs: [] as number[],
  errors: {} as Record<string, number>,
};

async function main(): Promise<void> {
  ensureCniBinary();
  const node: TestNode = await startNode({ extraArgs: ['--endpoint-upkeep-interval', '2'] });
  const conf = { cniVersion: '1.0.0', name: `soak-${node.agent.id}`, type: 'membrane-cni', agentSocket: node.agent.socket };
  let failed = false;
  const live = new Set<TestNetns>();
  try {
    const empty = await nodeState(node.agent);
    log(
      `agent ${node.agent.id} in ${node.ns.name}; ${CYCLES} cycles, ${CONCURRENCY} at a time, agent SIGKILL every ~${KILL_AGENT_EVERY} operations, plugin SIGKILL p=${KILL_PLUGIN}`,
    );
    let ops = 0;
    let nextAgentKill = KILL_AGENT_EVERY;
    let restarting: Promise<void> | null = null;
    const maybeKillAgent = () => {
      if (ops < nextAgentKill || restarting) return;
      nextAgentKill = ops + Math.round(KILL_AGENT_EVERY * (0.5 + Math.random()));
      stats.agentKills++;
      restarting = (async () => {
        await node.agent.kill9();
        await sleep(200);
        await node.agent.restart();
      })().finally(() => {
        restarting = null;
      });
    };
    const plugin = (verb: string, id: string, ns: string) => {
      ops++;
      maybeKillAgent();
      const kill = Math.random() < KILL_PLUGIN ? Math.floor(Math.random() * 300) : undefined;
      return cni(verb, conf, id, ns, kill);
    };
    let next = 0;
    const t0 = Date.now();
    const worker = async () => {
      while (next < CYCLES) {
        const n = next++;
        const ns = createNetns('mbsk');
        live.add(ns);
        const id = `soak-${n}-${randomId(4)}`;
        const add = await plugin('ADD', id, ns.path);
        if (add.signal === 'SIGKILL') stats.addKilled++;
        else if (add.code === 0) {
          stats.addOk++;
          stats.addMs.push(add.ms);
          const gw = add.out?.ips?.[0]?.gateway;
          if (gw && (await ping(ns, gw, 1))) stats.trafficOk++;
          else stats.trafficFailed++;
        } else {
          stats.addFailed++;
          const key = `ADD ${add.out?.code ?? add.code}: ${String(add.out?.msg ?? '')
            .replace(/soak-[\w-]+/g, 'ID')
            .slice(0, 80)}`;
          stats.errors[key] = (stats.errors[key] ?? 0) + 1;
        }
        // The runtime DELs until a DEL succeeds (kubelet retries; an unreachable agent means "queued").
        for (let attempt = 0; ; attempt++) {
          const del = await plugin('DEL', id, ns.path);
          if (del.code === 0) {
            stats.delMs.push(del.ms);
            break;
          }
          if (del.signal === 'SIGKILL') stats.delKilled++;
          else {
            const key = `DEL ${del.out?.code ?? del.code}: ${String(del.out?.msg ?? '')
              .replace(/soak-[\w-]+/g, 'ID')
              .slice(0, 80)}`;
            stats.errors[key] = (stats.errors[key] ?? 0) + 1;
          }
          stats.delRetries++;
          if (attempt > 50) throw new Error(`DEL of ${id} never succeeded`);
          await sleep(200);
        }
        ns.remove();
        live.delete(ns);
        stats.cycles++;
        if (stats.cycles % 250 === 0)
          log(`${stats.cycles}/${CYCLES} cycles, ${stats.agentKills} agent kills, ${Math.round((Date.now() - t0) / 1000)} s`);
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    while (restarting) await restarting;
    // The queue drains at the next upkeep (2 s here).
    const queue = pendingDeletesDir(node.agent.socket);
    for (let i = 0; i < 60 && listPendingDeletes(queue).length; i++) await sleep(500);
    const queued = listPendingDeletes(queue).length;
    const end = await nodeState(node.agent);
    const leaks = diff(empty, end);
    const result = {
      cycles: stats.cycles,
      concurrency: CONCURRENCY,
      seconds: Math.round((Date.now() - t0) / 1000),
      agentKills: stats.agentKills,
      adds: {
        ok: stats.addOk,
        failed: stats.addFailed,
        pluginKilled: stats.addKilled,
        p50Ms: Math.round(percentile(stats.addMs, 0.5)),
        p99Ms: Math.round(percentile(stats.addMs, 0.99)),
      },
      dels: {
        pluginKilled: stats.delKilled,
        retries: stats.delRetries,
        p50Ms: Math.round(percentile(stats.delMs, 0.5)),
        p99Ms: Math.round(percentile(stats.delMs, 0.99)),
      },
      traffic: { ok: stats.trafficOk, failed: stats.trafficFailed },
      errors: stats.errors,
      queuedLeft: queued,
      leaks,
    };
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    if (JSON_OUT) fs.writeFileSync(JSON_OUT, JSON.stringify(result, null, 2));
    failed = leaks.length > 0 || queued > 0;
    log(failed ? `LEAKED: ${leaks.join('; ')}${queued ? `; ${queued} DELs still queued` : ''}` : 'nothing leaked');
  } finally {
    for (const ns of live) ns.remove();
    await node.cleanup();
  }
  process.exit(failed ? 1 : 0);
}

/** What the end state has that the start did not (or lacks). */
function diff(a: NodeState, b: NodeState): string[] {
  const out: string[] = [];
  for (const k of ['endpoints', 'addresses', 'links', 'routes'] as const) {
    const extra = b[k].filter((x) => !a[k].includes(x));
    if (extra.length) out.push(`${k}: ${extra.slice(0, 5).join(', ')}${extra.length > 5 ? ` (+${extra.length - 5})` : ''}`);
  }
  for (const k of Object.keys(a.maps)) if (a.maps[k] !== b.maps[k]) out.push(`map ${k}: ${a.maps[k]} -> ${b.maps[k]} entries`);
  for (const k of Object.keys(a.records))
    if (a.records[k] !== b.records[k]) out.push(`store ${k}: ${a.records[k]} -> ${b.records[k]} records`);
  return out;
}

main().catch((e) => {
  log(`failed: ${(e as Error).stack ?? e}`);
  process.exit(2);
});
