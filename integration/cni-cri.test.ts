// The kubelet path: a private containerd 1.6 whose CRI plugin runs membrane-cni, driven by a CRI v1 gRPC
// client. Pods get eth0 with an address from the agent's pool and talk; CNI_ARGS and PascalCase
// runtimeConfig reach the endpoint; Stop/Remove (two DELs, the second without a netns) free everything;
// an ADD that fails (pool exhausted) leaves nothing and the runtime's DEL after it succeeds.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startAgent, randomId } from './lib/agent.ts';
import { ping, linkGone, type TestNetns } from './lib/netns.ts';
import { startContainerd, waitNetworkReady } from './lib/cri-containerd.ts';
import { cniInvocations, holdRuntimeHost } from './lib/runtimes.ts';
import { claimPrefix24 } from './lib/subnets.ts';
import { ensureCniBinary } from '../cni/test/lib/exec.ts';

const cniBin = ensureCniBinary();

/** A pod netns (containerd's bind mount) seen through the TestNetns interface for ping(). */
function podNetns(p: string): TestNetns {
  return {
    name: path.basename(p),
    path: p,
    exec: async (cmd, args) => execFileSync('nsenter', [`--net=${p}`, cmd, ...args], { encoding: 'utf8', timeout: 20_000 }),
    spawn: () => {
      throw new Error('not used');
    },
    remove: () => undefined,
  };
}

t.test('containerd CRI: RunPodSandbox networks pods through membrane-cni, Stop/Remove free everything', async (t) => {
  await holdRuntimeHost(t, ['/var/lib/cni'], /^blob-info-cache-v1\.boltdb$/);
  const subnet = `${claimPrefix24(200, 250)}.0/29`; // 5 pod addresses
  const agent = await startAgent({ pools: [subnet] });
  t.teardown(() => agent.cleanup());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-cri-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const cniLog = path.join(dir, 'cni.log');
  const netName = `cri-${agent.id}`;
  const ctrd = await startContainerd({
    dir,
    plugins: { 'membrane-cni': cniBin },
    confList: {
      cniVersion: '1.0.0',
      name: netName,
      plugins: [
        {
          type: 'membrane-cni',
          agentSocket: agent.socket,
          stateDir: agent.stateDir,
          logFile: cniLog,
          logLevel: 'debug',
          capabilities: { portMappings: true, bandwidth: true, 'io.kubernetes.cri.pod-annotations': true },
        },
      ],
    },
  });
  t.teardown(() => ctrd.stop());
  await waitNetworkReady(ctrd);
  t.ok(
    (await ctrd.cri.images()).some((i) => i.includes('membrane-test/pause')),
    'pause image imported offline',
  );

  const pod = (i: number, extra: object = {}) => ({
    name: `web-${i}`,
    uid: `uid-${randomId()}`,
    namespace: 'cni-test',
    logDirectory: path.join(dir, 'logs', String(i)),
    ...extra,
  });
  const ids = [
    await ctrd.cri.runPodSandbox(
      pod(0, {
        portMappings: [
          { protocol: 'TCP', container_port: 80, host_port: 18080 + Math.floor(Math.random() * 1000), host_ip: '127.0.0.1' },
        ],
        annotations: { 'kubernetes.io/ingress-bandwidth': '10M', 'kubernetes.io/egress-bandwidth': '20M' },
      }),
    ),
    await ctrd.cri.runPodSandbox(pod(1)),
  ];
  const st = await Promise.all(ids.map((id) => ctrd.cri.status(id)));
  for (const s of st) {
    t.equal(s.state, 'SANDBOX_READY');
    t.ok(s.ip.startsWith(subnet.split('.').slice(0, 3).join('.') + '.'), `pod IP ${s.ip} from the agent's pool ${subnet}`);
    t.ok(s.netns, `pod netns ${s.netns}`);
    t.match(
      execFileSync('nsenter', [`--net=${s.netns}`, 'ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0'], { encoding: 'utf8' }),
      `${s.ip}/32`,
      'eth0 carries it',
    );
  }
  t.ok(await ping(podNetns(st[0].netns!), st[1].ip), 'pod 0 pings pod 1');
  t.ok(await ping(podNetns(st[1].netns!), st[0].ip), 'pod 1 pings pod 0');

  const ep = await agent.client.getEndpoint(ids[0], 'eth0');
  t.equal(ep.labels['k8s:io.kubernetes.pod.namespace'], 'cni-test', 'K8S_POD_NAMESPACE -> label');
  t.same(
    [ep.metadata['k8s:io.kubernetes.pod.name'], ep.metadata['k8s:io.kubernetes.pod.infra-container-id']],
    ['web-0', ids[0]],
    'CNI_ARGS -> metadata',
  );
  t.match(ep.metadata['k8s:io.kubernetes.pod.uid'], /^uid-/);
  const pm = JSON.parse(ep.metadata['cni:port-mappings']);
  t.same(pm[0].containerPort, 80, "containerd's PascalCase portMappings understood");
  t.same(
    JSON.parse(ep.metadata['cni:bandwidth']),
    { ingressRate: 10_000_000, ingressBurst: 4294967295, egressRate: 20_000_000, egressBurst: 4294967295 },
    'and its bandwidth',
  );

  // fill the pool; the next pod's ADD fails with "try again later" and leaves nothing behind
  const more: string[] = [];
  for (let i = 2; i < 5; i++) more.push(await ctrd.cri.runPodSandbox(pod(i)));
  const before = (await agent.client.listEndpoints()).length;
  const err = await ctrd.cri.runPodSandbox(pod(9)).then(
    () => null,
    (e: Error) => e,
  );
  t.ok(err, 'RunPodSandbox fails with the pool exhausted');
  t.match(err?.message ?? '', /membrane-cni/, `containerd reports our error: ${err?.message}`);
  t.equal((await agent.client.listEndpoints()).length, before, 'the failed ADD left no endpoint');
  t.equal((await ctrd.cri.listPodSandbox()).length, 5, 'and no sandbox');

  for (const id of [...ids, ...more]) {
    const { hostIfName } = await agent.client.getEndpoint(id, 'eth0');
    await ctrd.cri.stopPodSandbox(id);
    t.ok(await linkGone(hostIfName), 'StopPodSandbox removed the host veth');
    await ctrd.cri.removePodSandbox(id);
  }
  t.same(await ctrd.cri.listPodSandbox(), [], 'no sandbox left');
  t.same(await agent.client.listEndpoints(), [], 'no endpoint left');
  t.same(
    (await agent.client.ipam()).flatMap((p) => p.allocations),
    [],
    'no address left',
  );

  const calls = cniInvocations(cniLog);
  const dels = calls.filter((c) => c.verb === 'DEL' && c.containerId === ids[1]);
  t.same(
    dels.map((d) => d.netns === ''),
    [false, true],
    'two DELs per pod: Stop with the netns, Remove without',
  );
  const failedDel = calls.filter((c) => c.verb === 'DEL' && !ids.includes(c.containerId) && !more.includes(c.containerId));
  t.ok(failedDel.length >= 1, 'containerd sent DEL after the failed ADD, and it succeeded (RunPodSandbox cleaned up)');
});
