// membrane-cni first in a conflist with Debian's reference portmap and bandwidth chained after it, run
// the way libcni runs a list. Checks what they did (iptables DNAT that carries traffic, tc shaping on
// our host veth) and that DEL plus our clean-up remove exactly what they created.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startAgent, randomId } from './lib/agent.ts';
import { createNetns, linkGone } from './lib/netns.ts';
import { startEchoServer, killAll } from './lib/tcp.ts';
import { ensureCniBinary } from '../cni/test/lib/exec.ts';
import { makeRuntime, type ConfList } from '../cni/test/lib/libcni.ts';
import { natRulesMentioning, removePortmapLeftovers, snapshotNat } from '../cni/test/lib/iptables.ts';

const cniBin = ensureCniBinary();

function links(): string[] {
  return (JSON.parse(execFileSync('ip', ['-j', 'link', 'show'], { encoding: 'utf8' })) as { ifname: string }[]).map(
    (l) => l.ifname,
  );
}
const qdiscs = (dev: string) => {
  try {
    return execFileSync('tc', ['qdisc', 'show', 'dev', dev], { encoding: 'utf8' });
  } catch {
    return '';
  }
};

function hostRequest(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    const timer = setTimeout(() => {
      s.destroy();
      resolve('timeout');
    }, 5000);
    s.on('connect', () => s.write('ping'));
    s.on('data', (d) => {
      clearTimeout(timer);
      s.end();
      resolve(d.toString());
    });
    s.on('error', (e) => {
      clearTimeout(timer);
      resolve(`error ${(e as NodeJS.ErrnoException).code}`);
    });
  });
}

// bandwidth's egress shaping (traffic from the pod) adds an `ingress` qdisc to our host veth, which the
// agent's clsact qdisc (its BPF attach point) already holds: "create ingress qdisc: file exists". It
// works once the agent attaches with TCX links instead. Ingress shaping (traffic to the pod) works.
const EGRESS_TODO = "bandwidth egress shaping needs the ingress qdisc slot that the agent's clsact holds (needs TCX attach)";

for (const [style, egress] of [
  ['containerd', false],
  ['podman', false],
  ['containerd', true],
] as const) {
  t.test(
    `chained portmap + bandwidth (${style} runtimeConfig keys${egress ? ', egress shaping' : ''})`,
    { todo: egress ? EGRESS_TODO : false },
    async (t) => {
      const agent = await startAgent();
      t.teardown(() => agent.cleanup());
      const nat = snapshotNat();
      t.teardown(() => {
        removePortmapLeftovers(nat);
      });
      const linksBefore = new Set(links());
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-chain-'));
      t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
      for (const p of ['portmap', 'bandwidth']) fs.symlinkSync(`/usr/lib/cni/${p}`, path.join(dir, p));
      fs.symlinkSync(cniBin, path.join(dir, 'membrane-cni'));
      const runtime = makeRuntime((type) => path.join(dir, type), dir);
      const ns = createNetns('mbp');
      t.teardown(() => ns.remove());

      const list: ConfList = {
        cniVersion: '1.0.0',
        name: `chain-${agent.id}`,
        plugins: [
          {
            type: 'membrane-cni',
            agentSocket: agent.socket,
            stateDir: agent.stateDir,
            capabilities: { portMappings: true, bandwidth: true },
          },
          { type: 'portmap', capabilities: { portMappings: true }, snat: true },
          { type: 'bandwidth', capabilities: { bandwidth: true } },
        ],
      };
      const hostPort = 20000 + Math.floor(Math.random() * 20000);
      const capabilityArgs =
        style === 'containerd'
          ? {
              portMappings: [{ HostPort: hostPort, ContainerPort: 8080, Protocol: 'tcp', HostIP: '127.0.0.1' }],
              bandwidth: {
                IngressRate: 8_000_000,
                IngressBurst: 4294967295,
                ...(egress ? { EgressRate: 16_000_000, EgressBurst: 4294967295 } : {}),
              },
            }
          : {
              portMappings: [{ hostPort, containerPort: 8080, protocol: 'tcp', hostIP: '127.0.0.1' }],
              bandwidth: { ingressRate: 8_000_000, ingressBurst: 4294967295 },
            };
      const att = {
        containerId: `ch-${randomId(6)}`,
        netns: ns.path,
        args: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=chain;K8S_POD_NAME=p',
        capabilityArgs,
      };

      // whatever happens, the runtime's DEL of the whole chain runs (libcni's runtimes do it after a failed ADD)
      t.teardown(() =>
        runtime
          .del(list, att)
          .catch(() => runtime.del(list, { ...att, netns: '' }))
          .catch(() => undefined),
      );
      const result = await runtime.add(list, att);
      const ip = result.ips[0].address.split('/')[0];
      const ep = await agent.client.getEndpoint(att.containerId, 'eth0');
      t.equal(result.interfaces[0].name, ep.hostIfName, 'the final result still carries our interfaces');
      t.same(
        JSON.parse(ep.metadata['cni:port-mappings']),
        [{ hostPort, containerPort: 8080, protocol: 'tcp', hostIP: '127.0.0.1' }],
        `${style} port mappings read case-insensitively into the endpoint`,
      );
      t.equal(JSON.parse(ep.metadata['cni:bandwidth']).ingressRate, 8_000_000, 'bandwidth too');

      const dnat = natRulesMentioning(`--to-destination ${ip}:8080`);
      t.equal(dnat.length, 1, `portmap added a DNAT to ${ip}:8080`);
      const srv = await startEchoServer(ns, 8080);
      t.teardown(() => killAll([srv]));
      t.equal(await hostRequest(hostPort), 'ping', `127.0.0.1:${hostPort} reaches the pod through portmap`);

      t.match(qdiscs(ep.hostIfName), /qdisc tbf/, 'bandwidth shapes traffic to the pod (tbf on our host veth)');
      const ifb = links().filter((l) => !linksBefore.has(l) && l.startsWith('bwp'));
      if (egress) {
        t.equal(ifb.length, 1, `bandwidth shapes traffic from the pod through its ifb device (${ifb.join(',')})`);
        t.match(qdiscs(ifb[0]), /qdisc tbf/);
      }

      // portmap 1.1.1's CHECK looks for ip6tables rules it never made for an IPv4-only pod
      // (containernetworking/plugins#819, fixed upstream later): CHECK the rest of the chain.
      await t.resolves(runtime.check(list, att, result, ['portmap']), 'CHECK passes for membrane-cni and bandwidth in the chain');

      await runtime.del(list, att, result);
      t.same(natRulesMentioning(ip), [], 'portmap DEL removed its per-pod rules');
      // The host veth goes right after DEL answered (the agent's reaper), so it is polled for.
      t.ok(await linkGone([...ifb, ep.hostIfName]), 'ifb device and host veth gone');
      t.same(await agent.client.listEndpoints(), []);
      await t.resolves(
        runtime.del(list, { ...att, netns: '' }, result),
        'a second DEL of the whole chain with an empty CNI_NETNS succeeds',
      );
      const removed = removePortmapLeftovers(nat);
      t.comment(`removed portmap's top-level chains: ${removed.join(', ') || 'none new'}`);
      t.same(
        natRulesMentioning('CNI-DN-').filter((r) => r.includes(ip)),
        [],
      );
    },
  );
}
