// Benchmark of membrane-cni (not a test): ADD/DEL latency against the reference bridge + host-local plugin
// and Node's bare start, then RunPodSandbox/Stop/Remove through a private containerd with each plugin.
// One run, one environment (NODE_EXTRA_CA_CERTS and NODE_OPTIONS unset), samples interleaved so load
// drift hits every series alike. Prints markdown tables with ratios to stdout; progress on stderr.
//   node --import tsx scripts/bench/cni.ts [--n 100] [--pods 30] [--skip-cri] [--json FILE] [--ab OTHER_BIN]
// --ab: a second membrane-cni executable (e.g. one built from an older commit) takes its own ADD and
// DEL in the same interleaved rounds, against the same agent: an A/B that load drift cannot tilt.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startAgent, randomId, randomSubnet24 } from '../../integration/lib/agent.ts';
import { createNetns, type TestNetns } from '../../integration/lib/netns.ts';
import { startContainerd, waitNetworkReady, type Containerd } from '../../integration/lib/cri-containerd.ts';
import { CNI_BIN, ensureCniBinary, runtimeEnv } from '../../cni/test/lib/exec.ts';
import { absentNow, hostLock, removeIfOnly } from '../../cni/test/lib/host.ts';
import { markdownTable, median, percentile } from './lib.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
delete process.env.NODE_OPTIONS;
const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const N = arg('n', 100);
const PODS = arg('pods', 30);
const argText = (name: string) =>
  process.argv.includes(`--${name}`) ? process.argv[process.argv.indexOf(`--${name}`) + 1] : undefined;
const JSON_OUT = argText('json');
const AB_BIN = argText('ab');
const log = (s: string) => process.stderr.write(`bench-cni: ${s}\n`);

type Series = Record<string, number[]>;
const add = (s: Series, k: string, v: number) => {
  (s[k] ??= []).push(v);
};

/** Spawns like libcni (stdin piped, stdout/stderr captured) and times until the process has exited. */
function timed(
  bin: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  stdin: string,
): Promise<{ ms: number; code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(bin, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c) => {
      out += c;
    });
    child.stderr.on('data', () => undefined);
    child.on('error', reject);
    child.on('close', (code) => resolve({ ms: performance.now() - t0, code, out }));
    child.stdin.on('error', () => undefined); // a plugin may exit without reading stdin
    child.stdin.end(stdin);
  });
}

async function cniOp(bin: string, verb: string, conf: object, cid: string, ns: string, cniPath: string): Promise<number> {
  const env = runtimeEnv({
    CNI_COMMAND: verb,
    CNI_CONTAINERID: cid,
    CNI_NETNS: ns,
    CNI_IFNAME: 'eth0',
    CNI_PATH: cniPath,
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=${cid}`,
  });
  const r = await timed(bin, [], env, JSON.stringify(conf));
  if (r.code !== 0) throw new Error(`${path.basename(bin)} ${verb} ${cid} failed: ${r.out}`);
  return r.ms;
}

async function directBench(): Promise<Series> {
  const s: Series = {};
  const agent = await startAgent({ pools: [randomSubnet24()] });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-bench-cni-'));
  const bridge = `bnb${randomId(3)}`;
  const nss: { m: TestNetns; b: TestNetns; ab?: TestNetns }[] = [];
  try {
    const membrane = {
      cniVersion: '1.0.0',
      name: `bench-${agent.id}`,
      type: 'membrane-cni',
      agentSocket: agent.socket,
      stateDir: agent.stateDir,
    };
    const ref = {
      cniVersion: '1.0.0',
      name: `benchbr-${agent.id}`,
      type: 'bridge',
      bridge,
      isGateway: true,
      ipMasq: false,
      ipam: {
        type: 'host-local',
        ranges: [[{ subnet: randomSubnet24() }]],
        routes: [{ dst: '0.0.0.0/0' }],
        dataDir: path.join(tmp, 'ipam'),
      },
    };
    for (let i = 0; i < N; i++)
      nss.push({ m: createNetns('mbbm'), b: createNetns('mbbb'), ...(AB_BIN ? { ab: createNetns('mbba') } : {}) });
    const env = runtimeEnv();
    // warm the page cache for both executables and node
    for (let i = 0; i < 3; i++) {
      await timed(CNI_BIN, [], { ...env, CNI_COMMAND: 'VERSION' }, '{}');
      await timed('/usr/lib/cni/bridge', [], { ...env, CNI_COMMAND: 'VERSION' }, '{}');
      await timed(process.execPath, ['-e', '0'], env, '');
    }
    log(`ADD x${N} (interleaved: node -e 0, /bin/true, membrane-cni, bridge)`);
    for (const [i, ns] of nss.entries()) {
      add(s, 'node -e 0', (await timed(process.execPath, ['-e', '0'], env, '')).ms);
      add(s, '/bin/true', (await timed('/bin/true', [], env, '')).ms);
      add(s, 'membrane-cni VERSION', (await timed(CNI_BIN, [], { ...env, CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}')).ms);
      add(s, 'membrane ADD', await cniOp(CNI_BIN, 'ADD', membrane, `bm-${i}`, ns.m.path, '/usr/lib/cni'));
      add(s, 'bridge ADD', await cniOp('/usr/lib/cni/bridge', 'ADD', ref, `bb-${i}`, ns.b.path, '/usr/lib/cni'));
      if (AB_BIN && ns.ab)
        add(s, 'membrane ADD (--ab)', await cniOp(AB_BIN, 'ADD', membrane, `ba-${i}`, ns.ab.path, '/usr/lib/cni'));
    }
    log(`DEL x${N}, then a second DEL each`);
    for (const [i, ns] of nss.entries()) {
      add(s, 'membrane DEL', await cniOp(CNI_BIN, 'DEL', membrane, `bm-${i}`, ns.m.path, '/usr/lib/cni'));
      add(s, 'bridge DEL', await cniOp('/usr/lib/cni/bridge', 'DEL', ref, `bb-${i}`, ns.b.path, '/usr/lib/cni'));
      if (AB_BIN && ns.ab)
        add(s, 'membrane DEL (--ab)', await cniOp(AB_BIN, 'DEL', membrane, `ba-${i}`, ns.ab.path, '/usr/lib/cni'));
    }
    for (const [i, ns] of nss.entries()) {
      add(s, 'membrane DEL (again)', await cniOp(CNI_BIN, 'DEL', membrane, `bm-${i}`, ns.m.path, '/usr/lib/cni'));
      add(s, 'bridge DEL (again)', await cniOp('/usr/lib/cni/bridge', 'DEL', ref, `bb-${i}`, ns.b.path, '/usr/lib/cni'));
    }
    log('NODE_EXTRA_CA_CERTS cost (what a runtime started with it hands every Node plugin), and the launcher');
    execFileSync(
      path.join(import.meta.dirname, '../install-cni'),
      ['--bin-dir', path.join(tmp, 'bin'), '--no-conf', '--launcher'],
      { env },
    );
    const launcher = path.join(tmp, 'bin/membrane-cni');
    const ca = { ...env, NODE_EXTRA_CA_CERTS: '/etc/ssl/certs/ca-certificates.crt' };
    for (let i = 0; i < 30; i++) {
      add(s, 'membrane-cni VERSION via sh launcher', (await timed(launcher, [], { ...env, CNI_COMMAND: 'VERSION' }, '{}')).ms);
      add(
        s,
        'membrane-cni VERSION (again, same rounds)',
        (await timed(CNI_BIN, [], { ...env, CNI_COMMAND: 'VERSION' }, '{}')).ms,
      );
      if (!fs.existsSync(ca.NODE_EXTRA_CA_CERTS)) continue;
      add(s, 'node -e 0 (with NODE_EXTRA_CA_CERTS)', (await timed(process.execPath, ['-e', '0'], ca, '')).ms);
      add(
        s,
        'membrane-cni VERSION (with NODE_EXTRA_CA_CERTS)',
        (await timed(CNI_BIN, [], { ...ca, CNI_COMMAND: 'VERSION' }, '{}')).ms,
      );
      add(
        s,
        'membrane-cni VERSION via sh launcher (with NODE_EXTRA_CA_CERTS)',
        (await timed(launcher, [], { ...ca, CNI_COMMAND: 'VERSION' }, '{}')).ms,
      );
    }
  } finally {
    for (const ns of nss) {
      ns.m.remove();
      ns.b.remove();
      ns.ab?.remove();
    }
    await agent.cleanup();
    try {
      fs.rmSync(tmp, { recursive: true, force: true });
    } catch {
      /* ignore */
    }
    await timed('ip', ['link', 'del', bridge], runtimeEnv(), '').catch(() => undefined);
  }
  return s;
}

async function criBench(): Promise<Series> {
  const s: Series = {};
  const unlock = await hostLock('cni-runtimes');
  const created = absentNow(['/var/lib/cni']);
  const agent = await startAgent({ pools: [randomSubnet24()] });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-bench-cri-'));
  const bridge = `bnc${randomId(3)}`;
  const runtimes: Record<string, Containerd> = {};
  try {
    runtimes.membrane = await startContainerd({
      dir: path.join(tmp, 'm'),
      plugins: { 'membrane-cni': CNI_BIN },
      confList: {
        cniVersion: '1.0.0',
        name: `benchcri-${agent.id}`,
        plugins: [{ type: 'membrane-cni', agentSocket: agent.socket, stateDir: agent.stateDir }],
      },
    });
    runtimes.bridge = await startContainerd({
      dir: path.join(tmp, 'b'),
      plugins: { bridge: '/usr/lib/cni/bridge', 'host-local': '/usr/lib/cni/host-local' },
      confList: {
        cniVersion: '1.0.0',
        name: `benchcribr-${agent.id}`,
        plugins: [
          {
            type: 'bridge',
            bridge,
            isGateway: true,
            ipMasq: false,
            ipam: {
              type: 'host-local',
              ranges: [[{ subnet: randomSubnet24() }]],
              routes: [{ dst: '0.0.0.0/0' }],
              dataDir: path.join(tmp, 'ipam'),
            },
          },
        ],
      },
    });
    for (const c of Object.values(runtimes)) await waitNetworkReady(c);
    log(`RunPodSandbox/Stop/Remove x${PODS} per plugin, interleaved (after 2 warm-up pods each)`);
    for (let i = -2; i < PODS; i++) {
      for (const [name, c] of Object.entries(runtimes)) {
        const pod = {
          name: `bench-${i + 2}`,
          uid: `u-${randomId()}`,
          namespace: 'bench',
          logDirectory: path.join(tmp, 'logs', name, String(i + 2)),
        };
        let t0 = performance.now();
        const id = await c.cri.runPodSandbox(pod);
        const run = performance.now() - t0;
        t0 = performance.now();
        await c.cri.stopPodSandbox(id);
        const stop = performance.now() - t0;
        t0 = performance.now();
        await c.cri.removePodSandbox(id);
        const remove = performance.now() - t0;
        if (i < 0) continue;
        add(s, `${name} RunPodSandbox`, run);
        add(s, `${name} StopPodSandbox`, stop);
        add(s, `${name} RemovePodSandbox`, remove);
      }
    }
  } finally {
    for (const c of Object.values(runtimes)) await c.stop().catch(() => undefined);
    await agent.cleanup();
    await timed('ip', ['link', 'del', bridge], runtimeEnv(), '').catch(() => undefined);
    fs.rmSync(tmp, { recursive: true, force: true });
    removeIfOnly(created);
    unlock();
  }
  return s;
}

const f = (x: number) => x.toFixed(1);
const stat = (xs: number[]) => ({ median: median(xs), p90: percentile(xs, 0.9), n: xs.length });

function report(direct: Series, cri: Series | undefined): string {
  const m = (k: string, s: Series = direct) => median(s[k]);
  const rows = Object.entries(direct).map(([k, xs]) => [k, f(median(xs)), f(percentile(xs, 0.9)), String(xs.length)]);
  const out = [
    `membrane-cni benchmark — ${new Date().toISOString()}, node ${process.version}, kernel ${os.release()}, ${os.cpus().length} CPUs, load ${os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
    '',
    markdownTable(['direct invocation (ms)', 'median', 'p90', 'n'], rows),
    '',
  ];
  const goals = [
    ['membrane ADD / node -e 0', m('membrane ADD') / m('node -e 0'), 1.3],
    ['membrane DEL / bridge DEL', m('membrane DEL') / m('bridge DEL'), 1.0],
    ...(direct['membrane ADD (--ab)']
      ? [
          ['membrane ADD / --ab ADD', m('membrane ADD') / m('membrane ADD (--ab)'), NaN],
          ['membrane DEL / --ab DEL', m('membrane DEL') / m('membrane DEL (--ab)'), NaN],
        ]
      : []),
    ['membrane-cni VERSION / node -e 0 (start-up cost of the executable)', m('membrane-cni VERSION') / m('node -e 0'), NaN],
  ];
  goals.push([
    'launcher / direct, VERSION',
    m('membrane-cni VERSION via sh launcher') / m('membrane-cni VERSION (again, same rounds)'),
    NaN,
  ]);
  if (direct['node -e 0 (with NODE_EXTRA_CA_CERTS)']) {
    goals.push([
      'membrane-cni VERSION with / without NODE_EXTRA_CA_CERTS',
      m('membrane-cni VERSION (with NODE_EXTRA_CA_CERTS)') / m('membrane-cni VERSION (again, same rounds)'),
      NaN,
    ]);
    goals.push([
      'launcher with NODE_EXTRA_CA_CERTS / direct without',
      m('membrane-cni VERSION via sh launcher (with NODE_EXTRA_CA_CERTS)') / m('membrane-cni VERSION (again, same rounds)'),
      NaN,
    ]);
  }
  if (cri) {
    out.push(
      markdownTable(
        ['containerd CRI (ms)', 'median', 'p90', 'n'],
        Object.entries(cri).map(([k, xs]) => [k, f(median(xs)), f(percentile(xs, 0.9)), String(xs.length)]),
      ),
      '',
    );
    goals.push(['RunPodSandbox membrane / bridge', m('membrane RunPodSandbox', cri) / m('bridge RunPodSandbox', cri), 1.15]);
    goals.push(['StopPodSandbox membrane / bridge', m('membrane StopPodSandbox', cri) / m('bridge StopPodSandbox', cri), NaN]);
    goals.push([
      'RemovePodSandbox membrane / bridge',
      m('membrane RemovePodSandbox', cri) / m('bridge RemovePodSandbox', cri),
      NaN,
    ]);
  }
  out.push(
    markdownTable(
      ['ratio (medians)', 'value', 'goal', 'met'],
      goals.map(([k, v, g]) => [
        String(k),
        `${(v as number).toFixed(2)}×`,
        Number.isNaN(g) ? '–' : `≤ ${g}×`,
        Number.isNaN(g) ? '–' : (v as number) <= (g as number) ? 'yes' : 'no',
      ]),
    ),
  );
  return out.join('\n');
}

ensureCniBinary();
const direct = await directBench();
const cri = process.argv.includes('--skip-cri') ? undefined : await criBench();
if (JSON_OUT) {
  const toStats = (s: Series) => Object.fromEntries(Object.entries(s).map(([k, xs]) => [k, stat(xs)]));
  fs.writeFileSync(
    JSON_OUT,
    JSON.stringify({ when: new Date().toISOString(), direct: toStats(direct), cri: cri && toStats(cri) }, null, 2),
  );
}
process.stdout.write(`${report(direct, cri)}\n`);
