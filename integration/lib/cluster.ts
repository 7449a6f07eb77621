// A cluster on one machine: N nodes as network namespaces on an underlay of our own (veth pairs into a
// bridge in a netns of ours, addresses from 198.18.0.0/15), each running a real membrane-agent under
// `nsenter --net` with its own state dir, bpffs dir, sockets and host device; etcd (Debian's
// etcd-server, its own data dir) and membrane-operator(s) in a control-plane netns on the same
// underlay. Pods are netns of ours attached to a node's agent. Everything is removed afterwards,
// even when a step failed or the process is exiting (kill only our PIDs, delete only our names).
//
// Reusable by part 2 (pod-to-pod across nodes: pods carry their node, nodes their underlay address
// and pod CIDRs) and by the benchmarks.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AgentClient } from '../../shared/src/api/client.ts';
import type { Endpoint } from '../../shared/src/types.ts';
import { connectEtcd, type Kv } from '../../shared/src/kvstore/kv.ts';
import { layout, type Layout } from '../../shared/src/kvstore/layout.ts';
import { agentPlaces, REPO, randomId, sleep } from './agent.ts';
import { ownDir } from './cleanup.ts';
import { keepLogs } from './keep-logs.ts';
import { startEtcd, type TestEtcd } from './etcd.ts';
import { createNetns, type TestNetns } from './netns.ts';
import { type Proc, supervisedProc, tail } from './proc.ts';

// Their home was this module: importers keep working.
export { eventually, type Proc, tail } from './proc.ts';

const AGENT_MAIN = path.join(REPO, 'shared/src/agent/main.ts');
const OPERATOR_MAIN = path.join(REPO, 'shared/src/operator/main.ts');
export const RELAY_MAIN = path.join(REPO, 'shared/src/relay/main.ts');

export interface ClusterOptions {
  nodes: number;
  /** Operators to start (0 = none; tests of the operator start their own). Default 1. */
  operators?: number;
  /** Node lease TTL (seconds); short so a killed agent leaves quickly. Default 5. Per node (by name)
   *  when a file needs both: a node restarted within its lease and another that leaves quickly. */
  leaseTtl?: number | ((node: string) => number);
  /** Extra agent / operator flags (agent: the same for every node, or per node). */
  agentArgs?: string[] | ((node: { name: string; ip: string; stateDir: string; cluster: string }) => string[]);
  operatorArgs?: string[];
  /** IPv4 pool for pod CIDRs (default: a random 10.x.0.0/16, /24 per node) and optional IPv6 pool. */
  clusterPool?: string;
  nodeMaskSize?: number;
  clusterPoolIpv6?: string;
  /** MTU of every link on the underlay (default: the kernel's 1500). */
  underlayMtu?: number;
  /** The agents' entry point (default: this checkout's shared/src/agent/main.ts; a bench's A/B gives
   *  another checkout's). */
  agentMain?: string;
}

export interface TestPod {
  name: string;
  node: TestNode;
  ns: TestNetns;
  endpoint: Endpoint;
  ip4: string;
  /** '' when the cluster has no IPv6 pool. */
  ip6: string;
}

export interface TestNode {
  index: number;
  name: string;
  /** Underlay address. */
  ip: string;
  netns: TestNetns;
  stateDir: string;
  bpffsDir: string;
  socket: string;
  /** The agent's flow observer (gRPC, unix socket). */
  observerSocket: string;
  client: AgentClient;
  agent: Proc;
  /** Creates a pod (netns + endpoint through this node's agent; `ips`: the addresses it asks for,
   *  `mtu`: its own instead of the network's). */
  pod(labels: Record<string, string>, name?: string, opts?: { ips?: string[]; mtu?: number }): Promise<TestPod>;
  deletePod(pod: TestPod): Promise<void>;
}

export interface TestCluster {
  id: string;
  name: string;
  L: Layout;
  /** Underlay /24 (e.g. "198.18.7.0/24"), and the control-plane netns (etcd, operators). */
  subnet: string;
  control: TestNetns;
  /** The underlay's bridge netns (br0; node n<i>'s port is "n<i>"). */
  underlay: TestNetns;
  etcd: TestEtcd;
  /** A client for the test itself (reaches etcd over a unix socket: no route into the underlay). */
  kv: Kv;
  nodes: TestNode[];
  operators: Proc[];
  clusterPool: string;
  /** Another node (agent started); its index is the next free one. */
  addNode(): Promise<TestNode>;
  /** Stops the node's agent (SIGKILL with kill9) and removes its netns, dirs and pins. */
  removeNode(node: TestNode, opts?: { kill9?: boolean }): Promise<void>;
  startOperator(extraArgs?: string[]): Promise<Proc>;
  /** A netns of ours on the underlay that is no node ("the world" next to the cluster): address .200 and up. */
  addExternal(): { ns: TestNetns; ip: string };
  /** A process of ours in the control-plane netns (relay, benchmarks' helpers): killed at cleanup. */
  spawnControl(args: string[], logName: string): Proc;
  cleanup(): Promise<void>;
}

export function randomUnderlay(): { prefix: string; subnet: string } {
  const r = crypto.randomInt(0, 512);
  const prefix = `198.${18 + (r >> 8)}.${r & 255}`;
  return { prefix, subnet: `${prefix}.0/24` };
}

export async function startCluster(opts: ClusterOptions): Promise<TestCluster> {
  const id = randomId(3);
  const name = `c${id}`;
  const root = fs.mkdtempSync(path.join(os.tmpdir(), `mbr-cluster-${id}-`));
  // The shared exit registry (cleanup.ts) removes what we create when cleanup() never runs (tap's
  // timeout, a crash, a SIGKILL): processes by PID, netns by name (createNetns), pins and root here.
  const releaseRoot = ownDir(root);
  const { prefix, subnet } = randomUnderlay();
  const clusterPool = opts.clusterPool ?? `10.${crypto.randomInt(64, 192)}.0.0/16`;
  const leaseTtl = (node: string) => (typeof opts.leaseTtl === 'function' ? opts.leaseTtl(node) : (opts.leaseTtl ?? 5));
  const procs: Proc[] = [];
  const netnss: TestNetns[] = [];
  const pods: TestPod[] = [];
  const pins: { dir: string; release: () => void }[] = [];
  let kv: Kv | undefined;
  let etcd: TestEtcd | undefined;
  let cleaned = false;

  const underlay = createNetns('mbu');
  netnss.push(underlay);
  execFileSync('nsenter', [`--net=${underlay.path}`, 'ip', 'link', 'add', 'br0', 'type', 'bridge']);
  execFileSync('nsenter', [`--net=${underlay.path}`, 'ip', 'link', 'set', 'br0', 'up']);

  /** A netns on the underlay: veth "eth0" in it, its peer on the bridge. */
  const attach = (ns: TestNetns, port: string, ip: string) => {
    const mtu = opts.underlayMtu ? ['mtu', String(opts.underlayMtu)] : [];
    execFileSync('nsenter', [
      `--net=${underlay.path}`,
      'ip',
      'link',
      'add',
      port,
      ...mtu,
      'type',
      'veth',
      'peer',
      'name',
      'eth0',
      ...mtu,
      'netns',
      ns.name,
    ]);
    execFileSync('nsenter', [`--net=${underlay.path}`, 'ip', 'link', 'set', port, 'master', 'br0', 'up']);
    execFileSync('nsenter', [`--net=${ns.path}`, 'ip', 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
    execFileSync('nsenter', [`--net=${ns.path}`, 'ip', 'link', 'set', 'eth0', 'up']);
  };

  const proc = (ns: TestNetns, args: string[], logFile: string, env: NodeJS.ProcessEnv = {}): Proc => {
    const p = supervisedProc(ns, args, logFile, env);
    procs.push(p);
    return p;
  };

  const cleanup = async () => {
    if (cleaned) return;
    cleaned = true;
    for (const pod of pods) {
      try {
        await pod.node.client.deleteEndpoint(pod.endpoint.containerId, pod.endpoint.ifName);
      } catch {
        /* agent gone */
      }
    }
    await Promise.all(procs.map((p) => p.stop().catch(() => undefined)));
    kv?.close();
    await etcd?.kill9();
    for (const pod of pods) pod.ns.remove();
    for (const ns of netnss) ns.remove();
    for (const pin of pins) fs.rmSync(pin.dir, { recursive: true, force: true });
    for (const pin of pins) pin.release();
    keepLogs(root);
    fs.rmSync(root, { recursive: true, force: true });
    releaseRoot();
  };

  try {
    const control = createNetns('mbcp');
    netnss.push(control);
    attach(control, 'cp', `${prefix}.2`);
    etcd = await startEtcd({ dir: root, netns: control.path, ip: `${prefix}.2`, name: `e${id}` });
    kv = await connectEtcd({ endpoints: [etcd.localUrl], timeoutMs: 5_000 });
    const endpoints = etcd.clientUrl;
    const nodes: TestNode[] = [];
    const operators: Proc[] = [];

    const startOperator = async (extraArgs: string[] = []): Promise<Proc> => {
      const n = operators.length + 1;
      const p = proc(
        control,
        [
          OPERATOR_MAIN,
          '--cluster-name',
          name,
          '--kvstore',
          'etcd',
          '--kvstore-endpoints',
          endpoints,
          '--cluster-pool',
          clusterPool,
          '--node-cidr-mask-size',
          String(opts.nodeMaskSize ?? 24),
          ...(opts.clusterPoolIpv6 ? ['--cluster-pool-ipv6', opts.clusterPoolIpv6] : []),
          '--leader-lease-ttl',
          '3',
          '--id',
          `op${n}`,
          '--log-level',
          'debug',
          ...(opts.operatorArgs ?? []),
          ...extraArgs,
        ],
        path.join(root, `operator${n}.log`),
      );
      await p.start();
      operators.push(p);
      return p;
    };

    const addNode = async (): Promise<TestNode> => {
      const index = nodes.length ? Math.max(...nodes.map((n) => n.index)) + 1 : 1;
      if (index > 200) throw new Error('too many nodes for one underlay /24');
      const nodeName = `n${index}`;
      const ns = createNetns('mbn');
      netnss.push(ns);
      const ip = `${prefix}.${10 + index}`;
      attach(ns, `n${index}`, ip);
      const stateDir = path.join(root, nodeName);
      fs.mkdirSync(stateDir, { recursive: true });
      const bpffsDir = `/sys/fs/bpf/mbc-${id}-${nodeName}`;
      pins.push({ dir: bpffsDir, release: ownDir(bpffsDir) });
      const socket = path.join(stateDir, 'agent.sock');
      const client = new AgentClient({ socketPath: socket, timeoutMs: 30_000 });
      const agent = proc(
        ns,
        [
          opts.agentMain ?? AGENT_MAIN,
          ...agentPlaces({ stateDir, socket, bpffsDir, hostDevice: 'membrane0' }),
          '--node-name',
          nodeName,
          '--cluster-name',
          name,
          '--kvstore',
          'etcd',
          '--kvstore-endpoints',
          endpoints,
          '--node-ip',
          ip,
          '--kvstore-lease-ttl',
          String(leaseTtl(nodeName)),
          ...(typeof opts.agentArgs === 'function'
            ? opts.agentArgs({ name: nodeName, ip, stateDir, cluster: name })
            : (opts.agentArgs ?? [])),
        ],
        path.join(stateDir, 'agent.log'),
      );
      const startAndWait = async () => {
        await agent.start();
        const deadline = Date.now() + 120_000; // a loaded 2-vCPU machine starts 3 agents and etcd slowly
        for (;;) {
          if (!agent.running()) throw new Error(`agent ${nodeName} exited during start:\n${tail(agent.logFile)}`);
          try {
            await client.healthz();
            return;
          } catch {
            /* not up yet */
          }
          if (Date.now() > deadline)
            throw new Error(`agent ${nodeName} did not become healthy within 120 s:\n${tail(agent.logFile)}`);
          await sleep(100);
        }
      };
      const node: TestNode = {
        index,
        name: nodeName,
        ip,
        netns: ns,
        stateDir,
        bpffsDir,
        socket,
        client,
        observerSocket: path.join(stateDir, 'observer.sock'),
        agent: { ...agent, start: startAndWait },
        async pod(labels, podName = `p${randomId(2)}`, opts = {}) {
          const pns = createNetns('mbp');
          const pod: TestPod = { name: podName, node, ns: pns, endpoint: undefined as unknown as Endpoint, ip4: '', ip6: '' };
          pods.push(pod);
          try {
            pod.endpoint = await client.createEndpoint({
              containerId: `${name}-${nodeName}-${podName}-${randomId()}`,
              netns: pns.path,
              ifName: 'eth0',
              labels,
              ...(opts.ips ? { ips: opts.ips } : {}),
              ...(opts.mtu ? { mtu: opts.mtu } : {}),
            });
          } catch (e) {
            pns.remove();
            pods.splice(pods.indexOf(pod), 1);
            throw e;
          }
          pod.ip4 = pod.endpoint.ips.find((x) => x.family === 4)?.address.split('/')[0] ?? '';
          pod.ip6 = pod.endpoint.ips.find((x) => x.family === 6)?.address.split('/')[0] ?? '';
          return pod;
        },
        async deletePod(pod) {
          await client.deleteEndpoint(pod.endpoint.containerId, pod.endpoint.ifName);
          pod.ns.remove();
          pods.splice(pods.indexOf(pod), 1);
        },
      };
      nodes.push(node);
      await node.agent.start();
      return node;
    };

    const removeNode = async (node: TestNode, o: { kill9?: boolean } = {}) => {
      for (const pod of pods.filter((p) => p.node === node)) {
        pod.ns.remove();
        pods.splice(pods.indexOf(pod), 1);
      }
      if (o.kill9) await node.agent.kill9();
      else await node.agent.stop();
      // Its underlay port goes now: a netns's veth ends are destroyed by the kernel's deferred netns
      // clean-up, so a node added right after (the same index, the same port name) could still find
      // `n<index>` on the bridge ("File exists"). Deleting one end of a veth takes both at once.
      try {
        execFileSync('nsenter', [`--net=${underlay.path}`, 'ip', 'link', 'del', `n${node.index}`], { stdio: 'ignore' });
      } catch {
        // already gone
      }
      node.netns.remove();
      netnss.splice(netnss.indexOf(node.netns), 1);
      fs.rmSync(node.bpffsDir, { recursive: true, force: true });
      nodes.splice(nodes.indexOf(node), 1);
    };

    let externals = 0;
    const addExternal = () => {
      if (externals >= 50) throw new Error('too many external netns for one underlay /24');
      const ns = createNetns('mbw');
      netnss.push(ns);
      const ip = `${prefix}.${200 + externals}`;
      attach(ns, `w${externals++}`, ip);
      return { ns, ip };
    };
    const spawnControl = (args: string[], logName: string) => proc(control, args, path.join(root, logName));

    for (let i = 0; i < (opts.operators ?? 1); i++) await startOperator();
    // Agents start in parallel (each waits for its pod CIDR from the operator).
    const starting: Promise<TestNode>[] = [];
    for (let i = 0; i < opts.nodes; i++) {
      starting.push(addNode());
      await sleep(50);
    }
    await Promise.all(starting);
    nodes.sort((a, b) => a.index - b.index);
    return {
      id,
      name,
      L: layout(name),
      subnet,
      control,
      underlay,
      etcd,
      kv,
      nodes,
      operators,
      clusterPool,
      addNode,
      removeNode,
      startOperator,
      addExternal,
      spawnControl,
      cleanup,
    };
  } catch (e) {
    await cleanup();
    throw e;
  }
}
