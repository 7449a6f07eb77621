// The README's how-tos, run as written: every ```sh block marked <!-- readme-test: NAME --> runs in
// bash (set -euo pipefail: any failing command fails the block) against private daemons. What the
// test changes is said here and nowhere else:
// - `docker`, `ctr`, `crictl`, `podman` and `membrane` reach the private daemons and agent through
//   DOCKER_HOST / MEMBRANE_SOCKET and shell functions adding socket/root/state flags;
// - `scripts/install-cni` of the CRI block also gets `--containerd-config` (the private containerd's
//   config.toml, the file the README says it reads) and `--log-file` (private);
// - podman reads a containers.conf of its own (CONTAINERS_CONF): the README's ulimit workaround, the
//   CNI backend, private dirs, and a conf dir holding what scripts/install-cni writes;
// - `ctr images pull` and podman's image are answered from the offline busybox image (no registry);
// - `crictl pods --name N -q`, when cri-tools is not installed, is answered by containerd itself
//   (`ctr containers ls` on the labels kubelet and the CRI put on sandboxes); kubelet's RunPodSandbox
//   is our CRI client's;
// - the Docker plugin name and the 10.201.0.0/24 subnet get fresh values (several runs share this
//   machine).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO, randomId, startAgent, type TestAgent } from './lib/agent.ts';
import { startDockerd } from './lib/dockerd.ts';
import { ensureBusyboxImage } from './lib/bbimage.ts';
import { startContainerd, waitNetworkReady } from './lib/cri-containerd.ts';
import { BB_REF, buildImageTarball } from './lib/images.ts';
import { absentNow, hostLock, removeIfOnly } from '../cni/test/lib/host.ts';
import { holdRuntimeHost, podmanConfig } from './lib/runtimes.ts';
import { ensureCniBinary, runtimeEnv } from '../cni/test/lib/exec.ts';

const cniBin = ensureCniBinary();

/** The README's blocks by their readme-test name. */
export function readmeBlocks(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of text.matchAll(/<!-- readme-test: ([\w-]+) -->\n```sh\n([\s\S]*?)```/g)) out.set(m[1], m[2]);
  return out;
}

// Docker and CRI share nothing; ctr and podman take the host lock on the CNI dirs in turn.
t.jobs = 2;

const blocks = readmeBlocks(fs.readFileSync(path.join(REPO, 'README.md'), 'utf8'));

function runBlock(name: string, prelude: string, env: NodeJS.ProcessEnv, rewrite: (s: string) => string = (s) => s) {
  const script = `set -euo pipefail\n${prelude}\n${rewrite(blocks.get(name) ?? 'echo "no block" >&2; exit 9')}`;
  const r = spawnSync('bash', ['-c', script], { cwd: REPO, env, encoding: 'utf8', timeout: 240_000 });
  return { code: r.status ?? -1, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

function agentEnv(agent: TestAgent, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return runtimeEnv({ MEMBRANE_SOCKET: agent.socket, PATH: `${path.join(REPO, 'dist/bin')}:${process.env.PATH}`, ...extra });
}

t.test('the README blocks are there', async (t) => {
  t.same(
    [...blocks.keys()].sort(),
    ['cri', 'ctr', 'docker', 'podman'],
    'docker, containerd (CRI, ctr) and podman how-tos are marked for this test',
  );
});

t.test('README how-to: Docker', async (t) => {
  const d = await startDockerd();
  t.teardown(() => d.destroy());
  const plugin = `mbt${randomId(4)}`;
  const agent = await startAgent({ bundle: true, extraArgs: ['--docker-plugin', plugin, '--docker-socket', d.socket] });
  t.teardown(() => agent.cleanup());
  await d.docker(['tag', await ensureBusyboxImage(d), 'busybox']);
  const b = crypto.randomBytes(2);
  const subnet = `10.${210 + (b[0] % 40)}.${b[1]}.`;
  const env = agentEnv(agent, { DOCKER_HOST: d.host, DOCKER_CONFIG: d.env.DOCKER_CONFIG!, DOCKER_CLI_HINTS: 'false' });
  t.teardown(() => {
    spawnSync('docker', ['rm', '-f', 'web', 'client'], { env });
    spawnSync('docker', ['network', 'rm', 'blue'], { env });
  });
  const r = runBlock('docker', '', env, (s) =>
    s.replaceAll('-d membrane --ipam-driver membrane', `-d ${plugin} --ipam-driver ${plugin}`).replaceAll('10.201.0.', subnet),
  );
  t.equal(r.code, 0, `the block runs to its end:\n${r.out}`);
  t.equal((r.out.match(/^hello$/gm) ?? []).length, 2, 'the client reaches web before and after the policy');
  t.match(r.out, /^dropped$/m, 'a container without the label is dropped');
  t.match(r.out, /DROPPED .*denied by default deny|DROPPED .*web-from-client/, 'membrane observe shows the drop');
  t.match(r.out, /-> web:80 \(ID:\d+\)/, 'the drop names the container web');
  t.match(r.out, /app=web/, 'endpoint list shows the Docker labels');
});

t.test('README how-to: containerd through CRI', async (t) => {
  const agent = await startAgent({ bundle: true });
  t.teardown(() => agent.cleanup());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-readme-cri-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const ctrd = await startContainerd({ dir, plugins: {} });
  t.teardown(() => ctrd.stop()); // first (teardowns run last-in first-out): the pods' DELs reach the agent
  const env = agentEnv(agent);
  const crictl =
    spawnSync('crictl', ['--version']).status === 0
      ? `crictl() { command crictl --runtime-endpoint unix://${ctrd.socket} "$@"; }`
      : // No cri-tools here: `crictl pods --name N -q` is answered by containerd itself, from the labels its CRI puts on sandboxes.
        `crictl() {
  [ "$1 $2 $4" = "pods --name -q" ] || { echo "the test stands in for crictl pods --name N -q only" >&2; return 2; }
  ctr -a ${ctrd.socket} -n k8s.io containers ls -q "labels.\\"io.kubernetes.pod.name\\"==$3,labels.\\"io.cri-containerd.kind\\"==sandbox"
}`;
  const install = runBlock('cri', crictl, env, (s) =>
    s
      .split('\n')[0]
      .replace(
        'scripts/install-cni',
        `scripts/install-cni --containerd-config ${ctrd.dir}/config.toml --log-file ${dir}/cni.log`,
      ),
  );
  t.equal(install.code, 0, `scripts/install-cni, reading containerd's config:\n${install.out}`);
  t.ok(
    fs.existsSync(path.join(ctrd.confDir, '10-membrane.conflist')) && fs.existsSync(path.join(ctrd.binDir, 'membrane-cni')),
    "the conflist and membrane-cni went where containerd's config.toml says",
  );
  await waitNetworkReady(ctrd);
  // kubelet's part: two pods in namespace default, labelled as kubelet labels a sandbox.
  const pods: Record<string, string> = {};
  for (const name of ['web', 'client']) {
    const uid = `${randomId()}-${name}`;
    const labels = {
      app: name,
      'io.kubernetes.pod.name': name,
      'io.kubernetes.pod.namespace': 'default',
      'io.kubernetes.pod.uid': uid,
    };
    pods[name] = await ctrd.cri.runPodSandbox({
      name,
      namespace: 'default',
      uid,
      labels,
      logDirectory: path.join(dir, 'pods', name),
    });
  }
  const r = runBlock('cri', crictl, env, (s) => s.split('\n').slice(1).join('\n'));
  t.equal(r.code, 0, `the block runs to its end:\n${r.out}`);
  for (const [name, id] of Object.entries(pods))
    t.match(
      r.out,
      new RegExp(`^\\d+\\s+${id.slice(0, 12)}\\s.*k8s:io\\.kubernetes\\.pod\\.namespace=default`, 'm'),
      `endpoint list shows pod ${name} by its sandbox id, with its namespace label`,
    );
  t.match(r.out, /^api:app=web$/m, 'endpoint labels -a gave web app=web');
  t.match(r.out, /^api:app=client$/m, 'endpoint labels -a gave client app=client');
  t.match(
    r.out,
    /^ALLOWED: 80\/tcp[\s\S]*allowed by web-from-client/m,
    'trace: app=client to app=web allowed by web-from-client',
  );
  t.match(r.out, /^DENIED: 80\/tcp[\s\S]*default deny[\s\S]*^exit code 2$/m, 'trace: app=web to app=web denied, exit code 2');
  const eps = await agent.client.listEndpoints();
  t.same(
    Object.fromEntries(eps.map((e) => [e.containerId, e.labels['api:app']])),
    { [pods.web]: 'web', [pods.client]: 'client' },
    'the agent holds the labels given',
  );
});

// ctr reads only the host's /etc/cni/net.d and /opt/cni/bin: never over a real installation there.
const ctrConf = '/etc/cni/net.d/10-membrane.conflist';
const realCtrInstall = [ctrConf, '/opt/cni/bin/membrane-cni'].find((f) => fs.existsSync(f));

t.test(
  'README how-to: ctr run --cni',
  { skip: realCtrInstall && `${realCtrInstall} exists on this machine: not touching a real installation` },
  async (t) => {
    const unlock = await hostLock('cni-runtimes'); // /etc/cni/net.d and /opt/cni/bin are the host's
    const created = absentNow(['/opt/cni/bin', '/opt/cni', '/etc/cni/net.d', '/etc/cni', '/var/lib/cni', '/var/log/membrane']);
    // What scripts/install-cni will write there (the reference plugins are linked only where missing).
    const ours = absentNow([ctrConf, ...['membrane-cni', 'loopback', 'portmap'].map((p) => `/opt/cni/bin/${p}`)]);
    t.teardown(() => {
      for (const f of ours) fs.rmSync(f, { force: true });
      removeIfOnly(created, /^cni\.log$/);
      unlock();
    });
    if (!t.equal(ours[0], ctrConf, `no other installation appeared in ${ctrConf} meanwhile`)) return;
    const agent = await startAgent({ bundle: true });
    t.teardown(() => agent.cleanup());
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-readme-ctr-'));
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const ctrd = await startContainerd({ dir, plugins: {} });
    t.teardown(() => ctrd.stop());
    const env = agentEnv(agent);
    const prelude = `ctr() {
  if [ "$1 $2" = "images pull" ]; then command ctr -a ${ctrd.socket} images tag --force ${BB_REF} "$3"; return; fi
  command ctr -a ${ctrd.socket} "$@"
}`;
    t.teardown(() =>
      runBlock(
        'ctr',
        prelude,
        env,
        () => 'ctr task kill -s KILL web || true; sleep 1; ctr task delete web || true; ctr container delete web || true',
      ),
    );
    const r = runBlock('ctr', prelude, env);
    t.equal(r.code, 0, `the block runs to its end:\n${r.out}`);
    t.match(
      r.out,
      new RegExp(`inet ${agent.pools[0].split('.').slice(0, 3).join('\\.')}\\.\\d+/32`),
      "ctr run --rm --cni: eth0 from the agent's pool",
    );
    t.match(r.out, /default-web/, 'the task shows up as <namespace>-<id>');
    t.match(r.out, /app=web/, 'membrane endpoint labels -a gave it app=web');
  },
);

t.test('README how-to: podman', async (t) => {
  await holdRuntimeHost(t, ['/var/lib/cni', '/var/lib/containers'], /^blob-info-cache-v1\.boltdb$/);
  const agent = await startAgent({ bundle: true });
  t.teardown(() => agent.cleanup());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-readme-podman-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // The README's ulimit workaround, and private dirs.
  const { conf, binDir, confDir } = podmanConfig(dir, cniBin);
  // What scripts/install-cni writes, in a conf dir of its own ("membrane" is the network's name).
  spawnSync(
    path.join(REPO, 'scripts/install-cni'),
    ['--bin-dir', binDir, '--conf-dir', confDir, '--socket', agent.socket, '--log-file', path.join(dir, 'cni.log')],
    { env: runtimeEnv() },
  );
  const readme = fs.readFileSync(path.join(REPO, 'README.md'), 'utf8');
  t.match(readme, 'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]', 'the README gives the same workaround');
  const env = agentEnv(agent, { CONTAINERS_CONF: conf });
  const prelude = `podman() { command podman --root ${dir}/root --runroot ${dir}/runroot --storage-driver overlay "$@"; }`;
  const load = runBlock(
    'podman',
    prelude,
    env,
    () => `podman load -i ${buildImageTarball(dir)} >/dev/null && podman tag membrane-test/bb:1 docker.io/library/busybox:latest`,
  );
  t.equal(load.code, 0, `offline image as busybox: ${load.out}`);
  t.teardown(() =>
    runBlock(
      'podman',
      prelude,
      env,
      () => 'podman rm -a -f -t 0 >/dev/null 2>&1 || true; podman system reset -f >/dev/null 2>&1 || true',
    ),
  );
  const r = runBlock('podman', prelude, env);
  t.equal(r.code, 0, `the block runs to its end:\n${r.out}`);
  t.match(r.out, /\bmembrane\b/, 'podman lists the membrane network');
  t.match(r.out, /^hello$/m, 'one container reaches the other');
  t.match(r.out, /^LABELS\napi:app=web$/m, 'membrane endpoint labels -a gave web app=web');
  t.same(await agent.client.listEndpoints(), [], 'podman rm -f deleted the endpoints');
});
