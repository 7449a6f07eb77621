// podman 4 with its CNI backend runs membrane-cni: private root, runroot, tmp dir and config dir, lowered
// default_ulimits (no CAP_SYS_RESOURCE here). podman asks VERSION before every ADD and DEL, sends
// K8S_POD_NAME=<container name> and a static address as CNI_ARGS IP=.
import t from 'tap';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { startAgent, randomId } from './lib/agent.ts';
import { buildImageTarball, BB_TAG } from './lib/images.ts';
import { cniInvocations, holdRuntimeHost, podmanConfig } from './lib/runtimes.ts';
import { ensureCniBinary, runtimeEnv } from '../cni/test/lib/exec.ts';

const execFileP = promisify(execFile);
const cniBin = ensureCniBinary();

t.test('podman (CNI backend) networks containers through membrane-cni', async (t) => {
  await holdRuntimeHost(t, ['/var/lib/cni', '/var/lib/containers'], /^blob-info-cache-v1\.boltdb$/);
  const agent = await startAgent();
  t.teardown(() => agent.cleanup());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-podman-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const net = `pod-${agent.id}`;
  const { conf, confDir } = podmanConfig(dir, cniBin, net);
  const cniLog = path.join(dir, 'cni.log');
  fs.writeFileSync(
    path.join(confDir, `20-${net}.conflist`),
    JSON.stringify({
      cniVersion: '1.0.0',
      name: net,
      plugins: [
        { type: 'membrane-cni', agentSocket: agent.socket, stateDir: agent.stateDir, logFile: cniLog, logLevel: 'debug' },
      ],
    }),
  );
  const env = runtimeEnv({ CONTAINERS_CONF: conf });
  const podman = async (args: string[]) =>
    (
      await execFileP(
        'podman',
        ['--root', path.join(dir, 'root'), '--runroot', path.join(dir, 'runroot'), '--storage-driver', 'overlay', ...args],
        { env, timeout: 120_000 },
      )
    ).stdout;
  t.teardown(async () => {
    await podman(['rm', '-a', '-f', '-t', '0']).catch(() => undefined);
    await podman(['system', 'reset', '-f']).catch(() => undefined);
  });

  t.match(await podman(['info', '--format', '{{.Host.NetworkBackend}}']), /cni/, 'podman uses its CNI backend');
  await podman(['load', '-i', buildImageTarball(dir)]);
  const image = (await podman(['images', '--format', '{{.Repository}}:{{.Tag}}'])).split('\n').find((l) => l.endsWith(BB_TAG))!;
  t.ok(image, `image loaded offline (${image})`);

  const once = await podman(['run', '--rm', '--network', net, image, 'ip', '-4', '-o', 'addr', 'show', 'eth0']);
  t.match(
    once,
    new RegExp(`inet ${agent.pools[0].split('.').slice(0, 3).join('\\.')}\\.\\d+/32`),
    "podman run --rm: eth0 from the agent's pool",
  );
  t.same(await agent.client.listEndpoints(), [], '--rm removed the endpoint');

  const staticIp = agent.pools[0].replace(/\.0\/24$/, '.77');
  const names = [`p1-${randomId()}`, `p2-${randomId()}`];
  await podman(['run', '-d', '--name', names[0], '--network', net, '--ip', staticIp, image, 'sleep', '300']);
  await podman(['run', '-d', '--name', names[1], image, 'sleep', '300']);
  const eps = await agent.client.listEndpoints();
  t.equal(eps.length, 2, 'two endpoints');
  const first = eps.find((e) => e.metadata['k8s:io.kubernetes.pod.name'] === names[0]);
  t.ok(first, 'K8S_POD_NAME (the container name) reaches the endpoint');
  t.equal(first?.ips[0].address, `${staticIp}/32`, '--ip arrives as CNI_ARGS IP= and is honoured');
  const ip2 = (
    await podman(['inspect', names[1], '--format', `{{(index .NetworkSettings.Networks "${net}").IPAddress}}`])
  ).trim();
  t.ok(
    eps.some((e) => e.ips[0].address === `${ip2}/32`),
    `podman inspect shows the pod IP ${ip2}`,
  );
  const out = await podman(['exec', names[0], 'ping', '-c', '2', '-W', '2', ip2]);
  t.match(out, /2 packets received/, 'container 1 pings container 2');

  await podman(['rm', '-f', '-t', '0', ...names]);
  t.same(await agent.client.listEndpoints(), [], 'podman rm deleted both endpoints');
  t.same(
    (await agent.client.ipam()).flatMap((p) => p.allocations),
    [],
    'and released the addresses',
  );
  const calls = cniInvocations(cniLog);
  t.same([...new Set(calls.map((c) => c.verb))].sort(), ['ADD', 'DEL'], 'podman sent ADD and DEL (and VERSION before each)');
});
