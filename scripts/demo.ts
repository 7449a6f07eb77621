// npm run demo: Membrane's main job on one node, end to end, for a newcomer. A node agent; pods
// started the way kubelet starts them (CRI RunPodSandbox on containerd, which runs membrane-cni); a
// Docker container on a network of the membrane driver; traffic between them; a policy imported from
// a file; one connection allowed, one dropped; the drop in `membrane observe`, explained by `membrane
// policy trace`. Everything runs privately (own agent, containerd, dockerd, dirs, names) so it never
// touches the node's own services, and everything is removed at the end, also after a failure or ^C.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AgentClient } from '../shared/src/api/client.ts';
import { startContainerd, waitNetworkReady, type Containerd } from '../integration/lib/cri-containerd.ts';
import { startDockerd, type Dockerd } from '../integration/lib/dockerd.ts';
import { ensureBusyboxImage } from '../integration/lib/bbimage.ts';
import { claimSubnet } from '../integration/lib/subnets.ts';
import { absentNow, hostLock, removeIfOnly } from '../cni/test/lib/host.ts';
import { elapsed, note, run, step } from './demo/narrate.ts';
import { leftovers, nothingLeft } from './demo/leftovers.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BIN = path.join(REPO, 'dist/bin');
const POLICY = 'scripts/demo/web-policy.yaml';
const STEPS = 7;
const hex = (n: number) => crypto.randomBytes(n).toString('hex');
/** Every process, mount and directory of this run carries the tag (the leftover check looks for it). */
const tag = process.env.MEMBRANE_DEMO_ID ?? `mbrdemo${hex(3)}`;
const work = fs.mkdtempSync(`/tmp/${tag}-`);
const agentSocket = path.join(work, 'agent/agent.sock');
const hostDevice = tag.slice(0, 15);
const bpffsDir = `/sys/fs/bpf/${tag}`;
const plugin = tag;
// Claimed like the tests' subnets (integration/lib/subnets.ts), from the same ranges: the suite runs
// the demo (integration/demo.test.ts) next to another test file, whose agent or Docker network must
// not get the same /24 (both would route it on this host).
const podPool = `${claimSubnet(() => {
  const b = crypto.randomBytes(2);
  return `10.${64 + (b[0] % 128)}.${b[1]}`;
})}.0/24`;
const dockerSubnet = `${claimSubnet(() => {
  const b = crypto.randomBytes(2);
  return `10.${210 + (b[0] % 40)}.${b[1]}`;
})}.0/24`;

const env: NodeJS.ProcessEnv = { ...process.env, MEMBRANE_SOCKET: agentSocket, PATH: `${BIN}:${process.env.PATH}` };
delete env.NODE_EXTRA_CA_CERTS; // runtimes hand it to every plugin start: +35-65 ms each
delete env.NODE_OPTIONS;
const undo: (() => unknown)[] = [];
const hostLinks: string[] = [hostDevice];

function startAgent(): ChildProcess {
  const dir = path.dirname(agentSocket);
  fs.mkdirSync(dir, { recursive: true });
  const log = fs.openSync(path.join(dir, 'agent.log'), 'a');
  const supportsCri = fs.readFileSync(path.join(BIN, 'membrane-agent.js'), 'utf8').includes('--cri-socket <');
  const agent = spawn(
    path.join(BIN, 'membrane-agent'),
    [
      '--state-dir',
      dir,
      '--socket',
      agentSocket,
      '--bpffs-dir',
      bpffsDir,
      '--host-device',
      hostDevice,
      '--pool',
      podPool,
      '--observer-socket',
      path.join(dir, 'observer.sock'),
      '--metrics-address',
      'off',
      '--docker-plugin',
      plugin,
      '--docker-socket',
      path.join(work, 'dockerd/docker.sock'),
      ...(supportsCri ? ['--cri-socket', path.join(work, 'containerd/containerd.sock')] : []),
    ],
    { env, stdio: ['ignore', log, log] },
  );
  fs.closeSync(log);
  undo.push(
    () =>
      new Promise<void>((resolve) => {
        if (agent.exitCode !== null || agent.signalCode !== null) return resolve();
        agent.once('exit', () => resolve());
        agent.kill('SIGTERM');
      }),
  );
  return agent;
}

async function waitAgent(agent: ChildProcess): Promise<void> {
  const client = new AgentClient({ socketPath: agentSocket });
  for (let i = 0; ; i++) {
    try {
      await client.healthz();
      return;
    } catch {
      if (agent.exitCode !== null || i > 600)
        throw new Error(`the agent did not start:\n${fs.readFileSync(path.join(work, 'agent/agent.log'), 'utf8').slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** A command inside a pod's network namespace (what `kubectl exec` would run in its container). */
function inPod(pod: { name: string; netns: string }, cmd: string[], expect = [0]) {
  return run('nsenter', [`--net=${pod.netns}`, ...cmd], { env, prompt: `[pod ${pod.name}] `, shown: cmd.join(' '), expect });
}

async function main(): Promise<void> {
  const cm = (...args: string[]) => run('membrane', args, { env });
  note(`Membrane demo (everything private to this run: tag ${tag}, files in ${work})`);
  note(`export MEMBRANE_SOCKET=${agentSocket}   # the demo's agent; a node's default is /run/membrane/agent.sock`);

  step(
    1,
    STEPS,
    'Start the node agent, containerd and dockerd',
    "The agent owns the node's networking and programs the eBPF datapath. containerd (driven through CRI,\n" +
      'as kubelet drives it) and dockerd are the runtimes; both will ask the agent for networking.',
  );
  const unlock = await hostLock('cni-runtimes'); // libcni's cache dir is shared with the runtime tests
  const createdGlobal = absentNow(['/var/lib/cni']);
  undo.push(() => {
    removeIfOnly(createdGlobal);
    unlock();
  });
  const agent = startAgent();
  const [ctrd, dockerd] = (await Promise.all([
    startContainerd({ dir: work, plugins: {} }).then((c) => {
      undo.push(() => c.stop());
      return c;
    }),
    startDockerd({ root: path.join(work, 'dockerd') }).then((d) => {
      undo.push(() => d.destroy());
      return d;
    }),
    waitAgent(agent),
  ])) as [Containerd, Dockerd, undefined];
  env.DOCKER_HOST = dockerd.host;
  env.DOCKER_CONFIG = dockerd.env.DOCKER_CONFIG;
  env.DOCKER_CLI_HINTS = 'false';
  cm('status', '--brief');
  note(
    `containerd ${path.join(work, 'containerd/containerd.sock')}, dockerd ${dockerd.host}, the agent's Docker plugin "${plugin}"`,
  );
  note('membrane-cni goes where containerd looks for CNI plugins, with a conflist naming the agent:');
  run(
    path.join(REPO, 'scripts/install-cni'),
    ['--bin-dir', ctrd.binDir, '--conf-dir', ctrd.confDir, '--socket', agentSocket, '--log-file', path.join(work, 'cni.log')],
    { env, shown: `scripts/install-cni --bin-dir ${ctrd.binDir} --conf-dir ${ctrd.confDir} --socket $MEMBRANE_SOCKET` },
  );
  const image = await ensureBusyboxImage(dockerd);
  await waitNetworkReady(ctrd);

  step(
    2,
    STEPS,
    'A Docker container on a membrane network',
    "dockerd calls the agent's libnetwork driver: the same endpoint manager, IPAM and datapath as pods.\n" +
      'Its Docker labels become its endpoint labels: the policy below selects it by app=web.',
  );
  run('docker', ['network', 'create', '-d', plugin, '--ipam-driver', plugin, '--subnet', dockerSubnet, 'demo'], { env });
  undo.push(() => run('docker', ['network', 'rm', 'demo'], { env, expect: [0, 1] }));
  undo.push(() => run('docker', ['rm', '-f', 'web'], { env, expect: [0, 1] }));
  run(
    'docker',
    [
      'run',
      '-d',
      '--name',
      'web',
      '--label',
      'app=web',
      '--network',
      'demo',
      image,
      'sh',
      '-c',
      'echo hello from web > /tmp/index.html && exec busybox httpd -f -p 80 -h /tmp',
    ],
    { env },
  );
  const webIp = run('docker', ['inspect', '-f', '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}', 'web'], {
    env,
  }).stdout.trim();

  step(
    3,
    STEPS,
    'Two pods, started the way kubelet starts them',
    "CRI RunPodSandbox: containerd creates the pod's network namespace and runs membrane-cni ADD, which\n" +
      'asks the agent for an endpoint. shop/client and guest/stranger live in two namespaces.',
  );
  const pods: { name: string; netns: string; ip: string }[] = [];
  for (const [ns, name] of [
    ['shop', 'client'],
    ['guest', 'stranger'],
  ]) {
    const id = await ctrd.cri.runPodSandbox({
      name,
      namespace: ns,
      uid: `${tag}-${name}`,
      labels: { app: name },
      logDirectory: path.join(work, 'pods', name),
    });
    const st = await ctrd.cri.status(id);
    note(`RunPodSandbox ${ns}/${name} (labels app=${name}) -> pod ${id.slice(0, 12)}, eth0 ${st.ip}`);
    pods.push({ name: `${ns}/${name}`, netns: st.netns!, ip: st.ip });
  }
  const [client, stranger] = pods;
  const eps = await new AgentClient({ socketPath: agentSocket }).listEndpoints();
  hostLinks.push(...eps.map((e) => e.hostIfName));
  cm('endpoint', 'list');

  step(
    4,
    STEPS,
    'Traffic before any policy: both pods reach web',
    'An endpoint no policy selects allows everything. Pod-to-container packets go from one host veth to the\n' +
      'other inside the kernel (bpf_redirect_peer), never through a bridge.',
  );
  const curl = ['curl', '-sS', '-m', '3', `http://${webIp}/`];
  inPod(client, curl);
  inPod(stranger, curl);

  step(
    5,
    STEPS,
    'Import a policy from a file',
    'A CiliumNetworkPolicy: web accepts TCP 80 from namespace shop and refuses namespace guest. The agent\n' +
      "compiles it to entries of web's BPF policy map; identities (numbers for label sets) stand for the peers.",
  );
  run('cat', [POLICY], { env });
  cm('policy', 'import', POLICY);

  step(
    6,
    STEPS,
    'Traffic with the policy: one allowed, one dropped',
    'shop/client is allowed by the ingress rule; guest/stranger matches the deny rule, so its SYN is dropped\n' +
      "in the kernel at web's veth (curl times out).",
  );
  inPod(client, curl);
  const denied = inPod(stranger, curl, [0, 28]);
  if (denied.code === 0) throw new Error('the stranger was let through: the policy is not enforced');

  step(
    7,
    STEPS,
    'Why: the drop as a flow, and the policy explained',
    "`membrane observe` (hubble observe's flags and output) shows the drop and the policy rule behind it;\n" +
      '`membrane policy trace` walks the same decision for any two peers, before or after the fact.',
  );
  cm('observe', '--verdict', 'DROPPED', '--to-ip', webIp, '--last', '3', '--print-policy-names');
  run('membrane', ['policy', 'trace', '--src-ip', stranger.ip, '--dst-ip', webIp, '--dport', '80/tcp'], { env, expect: [2] });
  cm('policy', 'trace', '--src-ip', client.ip, '--dst-ip', webIp, '--dport', '80/tcp');
  note(`\nDone in ${elapsed()} s. Next: README.md (install as a service, Docker, containerd, podman how-tos).`);
}

async function cleanup(): Promise<boolean> {
  process.stdout.write('\n[cleanup] pods (CNI DEL), the container and network, dockerd, containerd, the agent, its datapath\n');
  for (const u of undo.reverse()) {
    try {
      await u();
    } catch (e) {
      process.stdout.write(`  cleanup step failed: ${(e as Error).message}\n`);
    }
  }
  undo.length = 0;
  spawnSync('ip', ['link', 'del', hostDevice], { stdio: 'ignore' });
  fs.rmSync(bpffsDir, { recursive: true, force: true });
  fs.rmSync(work, { recursive: true, force: true });
  const left = leftovers(tag, hostLinks, [work, bpffsDir]);
  if (nothingLeft(left)) process.stdout.write('  nothing left behind (no process, mount, link, pin or file of this run)\n');
  else process.stdout.write(`  LEFT BEHIND: ${JSON.stringify(left, null, 2)}\n`);
  return nothingLeft(left);
}

let cleaning: Promise<boolean> | undefined;
const cleanOnce = () => (cleaning ??= cleanup());
// ^C: clean up what exists so far, then leave.
for (const sig of ['SIGINT', 'SIGTERM'] as const)
  process.on(sig, () => {
    void cleanOnce().then(() => process.exit(130));
  });
let ok = true;
try {
  await main();
} catch (e) {
  ok = false;
  process.stdout.write(`\ndemo failed: ${(e as Error).message}\n`);
}
const clean = await cleanOnce();
process.exit(ok && clean ? 0 : 1);
