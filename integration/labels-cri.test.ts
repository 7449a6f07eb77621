// Pod labels on a kubelet node: kubelet hands a pod's labels to the runtime (CRI RunPodSandbox), not to
// CNI. A private containerd 1.6 runs membrane-cni; the agent asks that containerd's CRI (--cri-socket)
// for each pod's sandbox and takes its labels as k8s: labels, so a NetworkPolicy `podSelector:
// {matchLabels: {app: web}}` and a CiliumNetworkPolicy written with k8s:-prefixed keys both select the
// pods and are enforced on real traffic. The policy is loaded before the pods exist: a pod's labels and
// identity are in place before its first packet (its host link stays down while the CRI still owes the
// labels, and no packet of an allowed pod is ever dropped). A pod label claiming another namespace
// changes nothing: the namespace comes from K8S_POD_NAMESPACE only.
import t from 'tap';
import { spawn, execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { startAgent, randomId } from './lib/agent.ts';
import { startContainerd, waitNetworkReady } from './lib/cri-containerd.ts';
import { startEchoServer, killAll } from './lib/tcp.ts';
import { probe } from './lib/probe.ts';
import type { TestNetns } from './lib/netns.ts';
import { holdRuntimeHost } from './lib/runtimes.ts';
import { ensureCniBinary } from '../cni/test/lib/exec.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { ObserverClient } from '../shared/src/flows/client.ts';
import type { Endpoint } from '../shared/src/types.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}
t.setTimeout(10 * 60_000);

const execFileP = promisify(execFile);
const cniBin = ensureCniBinary();
const PORT = 7400 + Math.floor(Math.random() * 500);

/** A pod's netns (containerd's bind mount) as the test helpers want it. */
function podNetns(p: string): TestNetns {
  return {
    name: path.basename(p),
    path: p,
    exec: async (cmd, args) => (await execFileP('nsenter', [`--net=${p}`, cmd, ...args], { timeout: 20_000 })).stdout,
    spawn: (cmd, args) => spawn('nsenter', [`--net=${p}`, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }),
    remove: () => undefined,
  };
}

function linkUp(name: string): boolean {
  return /state UP|,UP[,>]/.test(execFileSync('ip', ['-o', 'link', 'show', 'dev', name], { encoding: 'utf8' }));
}

t.test("pod labels from containerd's CRI select pods; policies with k8s: keys are enforced", async (t) => {
  await holdRuntimeHost(t, ['/var/lib/cni'], /^blob-info-cache-v1\.boltdb$/);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-labels-cri-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const criSocket = path.join(dir, 'containerd', 'containerd.sock');
  const agent = await startAgent({ extraArgs: ['--cri-socket', criSocket] });
  t.teardown(() => agent.cleanup());
  const ctrd = await startContainerd({
    dir,
    plugins: { 'membrane-cni': cniBin },
    confList: {
      cniVersion: '1.0.0',
      name: `labels-${agent.id}`,
      plugins: [{ type: 'membrane-cni', agentSocket: agent.socket, stateDir: agent.stateDir }],
    },
  });
  t.teardown(() => ctrd.stop());
  await waitNetworkReady(ctrd);
  const children: ReturnType<typeof spawn>[] = [];
  t.teardown(() => killAll(children));

  // The policy comes first: no pod it selects may ever be reached, or reach, with the wrong identity.
  const pc = new PolicyClient(agent.client);
  await pc.import(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: ${PORT}, protocol: TCP}]
`);

  const run = async (name: string, namespace: string, labels: Record<string, string>) => {
    const id = await ctrd.cri.runPodSandbox({
      name,
      namespace,
      uid: `uid-${randomId()}`,
      labels,
      logDirectory: path.join(dir, 'logs', name),
    });
    // What the agent knew when RunPodSandbox returned (kubelet starts the pod's containers after it).
    // The link is read first: the link only comes up after the labels, so an up link with labels still
    // pending (or an identity without them) would be a window for packets under the wrong identity.
    const up = linkUp((await agent.client.getEndpoint(id, 'eth0')).hostIfName);
    const atReturn = await agent.client.getEndpoint(id, 'eth0');
    const st = await ctrd.cri.status(id);
    return { id, ip: st.ip, ns: podNetns(st.netns!), atReturn, up };
  };
  const web = await run('web', 'shop', { app: 'web', tier: 'front' });
  const client = await run('client', 'shop', { app: 'client' });
  const other = await run('other', 'shop', { app: 'other' });
  const intruder = await run('intruder', 'dev', { app: 'client', 'io.kubernetes.pod.namespace': 'shop' });
  for (const p of [web, client, other, intruder]) {
    if (p.up)
      t.ok(
        !p.atReturn.labelsPending && p.atReturn.labels['k8s:app'] && p.atReturn.identity >= 256,
        `${p.id.slice(0, 12)}: link up only with its pod labels and identity`,
      );
    // Link down when read: the labels may have come in just after (the endpoint is read second), but
    // the endpoint is never half-way: labels pending means identity init, labels known a real identity.
    else
      t.ok(
        p.atReturn.labelsPending ? p.atReturn.identity === 5 : p.atReturn.identity >= 256,
        `${p.id.slice(0, 12)}: link down while the CRI owes labels (identity init${p.atReturn.labelsPending ? '' : '; labels came in since'})`,
      );
  }

  const ready = async (id: string): Promise<Endpoint> => {
    for (const end = Date.now() + 30_000; Date.now() < end; ) {
      const ep = await agent.client.getEndpoint(id, 'eth0');
      if (!ep.labelsPending) return ep;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`endpoint ${id} still waits for its labels`);
  };
  const webEp = await ready(web.id);
  t.match(
    webEp.labels,
    { 'k8s:app': 'web', 'k8s:tier': 'front', 'k8s:io.kubernetes.pod.namespace': 'shop' },
    'pod labels from the CRI sandbox, as k8s: labels',
  );
  t.ok(webEp.identity >= 256, `identity ${webEp.identity}`);
  t.ok(linkUp(webEp.hostIfName), 'its link is up');
  const known = [web, client, other, intruder].filter((p) => !p.atReturn.labelsPending).length;
  t.comment(`labels known when RunPodSandbox returned: ${known} of 4 pods`);
  const intruderEp = await ready(intruder.id);
  t.equal(
    intruderEp.labels['k8s:io.kubernetes.pod.namespace'],
    'dev',
    "a pod label claiming namespace shop: the namespace stays K8S_POD_NAMESPACE's",
  );
  t.equal(intruderEp.labels['k8s:app'], 'client');
  for (const p of [client, other]) await ready(p.id);

  children.push(await startEchoServer(web.ns, PORT, '0.0.0.0'));
  t.equal(await probe(client.ns, web.ip, PORT, 5000), 'ok', 'NetworkPolicy: client -> web allowed');
  t.equal(await probe(other.ns, web.ip, PORT), 'timeout', 'other -> web dropped');
  t.equal(
    await probe(intruder.ns, web.ip, PORT),
    'timeout',
    'an app=client pod of namespace dev (claiming shop in a pod label) -> web dropped',
  );
  t.match(await pc.endpoint(web.id, 'eth0'), {
    policies: [{ name: 'shop/web-from-client' }],
    enforcement: { ingress: 'default-deny' },
  });
  // Not one packet of client's was dropped (its first SYN already carried its pod identity); other's were.
  const observer = new ObserverClient(agent.observerSocket);
  t.teardown(() => observer.close());
  const dropsFrom = async (ip: string) =>
    (await observer.collect({ whitelist: [{ eventType: [{ type: 1 }], sourceIp: [ip] }] })).length;
  t.equal(await dropsFrom(client.ip), 0, 'no drop from client: identity before its first packet');
  t.ok((await dropsFrom(other.ip)) > 0, 'the drops of other -> web are seen (the check above can fail)');
  await pc.delete('all');
  t.equal(await probe(other.ns, web.ip, PORT, 5000), 'ok', 'no policy: other -> web open');

  await pc.import(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-k8s-keys, namespace: shop}
spec:
  endpointSelector:
    matchLabels: {k8s:app: web}
    matchExpressions: [{key: k8s:tier, operator: In, values: [front]}]
  ingress:
  - fromEndpoints:
    - matchExpressions: [{key: k8s:app, operator: In, values: [client]}]
    toPorts: [{ports: [{port: "${PORT}", protocol: TCP}]}]
`);
  t.equal(await probe(client.ns, web.ip, PORT, 5000), 'ok', 'CiliumNetworkPolicy with k8s: keys: client -> web allowed');
  t.equal(await probe(other.ns, web.ip, PORT), 'timeout', 'other -> web dropped');
  t.match(await pc.endpoint(web.id, 'eth0'), { policies: [{ name: 'shop/web-k8s-keys' }] }, 'k8s:app selects the pod');
  await pc.delete('all');
});
