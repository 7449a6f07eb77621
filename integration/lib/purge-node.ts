// `scripts/install --uninstall --purge` for a harness node whose agent has stopped: an installation's
// config naming that agent's places and cluster settings (as the installer would have written it, under a
// scratch root), the purge run inside the node's netns, where what it removes lives.
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import { agentPlaces, REPO, sleep } from './agent.ts';
import { supervisedProc, tail, type Proc } from './proc.ts';
import type { TestCluster, TestNode } from './cluster.ts';

const cleanEnv = { ...process.env };
delete cleanEnv.NODE_EXTRA_CA_CERTS;

/** A command in the node's netns (its links, routes and tc filters). */
export function inNode(node: TestNode, cmd: string, args: string[]): SpawnSyncReturns<string> {
  return spawnSync('nsenter', [`--net=${node.netns.path}`, cmd, ...args], { encoding: 'utf8', env: cleanEnv, timeout: 120_000 });
}

/** The routes the agent installed to other nodes' pod CIDRs (our route protocol), one per line. */
export function clusterRoutes(node: TestNode): string {
  return inNode(node, 'ip', ['-4', 'route', 'show', 'proto', '196']).stdout.trim();
}

/** Runs the purge; `cluster` adds to the node's own settings (routing mode, tunnel device). */
export function purgeNode(c: TestCluster, node: TestNode, cluster: Record<string, unknown> = {}): SpawnSyncReturns<string> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-purge-'));
  try {
    fs.mkdirSync(path.join(root, 'etc/membrane'), { recursive: true });
    fs.writeFileSync(
      path.join(root, 'etc/membrane/agent.yaml'),
      YAML.stringify({
        stateDir: node.stateDir,
        socket: node.socket,
        bpffsDir: node.bpffsDir,
        hostDevice: 'membrane0',
        observerSocket: node.observerSocket,
        kvstore: 'etcd',
        clusterName: c.name,
        nodeIp: node.ip,
        ...cluster,
      }),
    );
    return inNode(node, 'bash', [path.join(REPO, 'scripts/install'), '--root', root, '--uninstall', '--purge']);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

/** The node's agent started again on the same dirs without cluster mode (stop it when done). */
export async function startSingleNode(node: TestNode, args: string[] = []): Promise<Proc> {
  const agent = supervisedProc(
    node.netns,
    [
      path.join(REPO, 'shared/src/agent/main.ts'),
      ...agentPlaces({ stateDir: node.stateDir, socket: node.socket, bpffsDir: node.bpffsDir, hostDevice: 'membrane0' }),
      '--node-name',
      node.name,
      ...args,
    ],
    path.join(node.stateDir, 'agent-single.log'),
  );
  await agent.start();
  for (const deadline = Date.now() + 60_000; ; await sleep(100)) {
    if (!agent.running()) throw new Error(`single-node agent on ${node.name} exited:\n${tail(agent.logFile)}`);
    try {
      await node.client.healthz();
      return agent;
    } catch {
      if (Date.now() > deadline) {
        await agent.stop();
        throw new Error(`single-node agent on ${node.name} not healthy in 60 s:\n${tail(agent.logFile)}`);
      }
    }
  }
}
