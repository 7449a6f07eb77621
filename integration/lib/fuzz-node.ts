// The hardening-fuzz*.test.ts setup: a real agent in a node netns of ours (lib/node-netns.ts) that
// also hosts a libnetwork plugin, two pod netns, an anchor endpoint (the label route needs one), the
// state a refused request must not change, and the checks every fuzzer ends with (nothing leaked, the
// agent alive, no internal error in its log). Seeded: each file passes a fixed seed, so that CI is
// deterministic; FUZZ_SEED=random searches, FUZZ_SEED=<n> repeats a run.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import type { Endpoint } from '../../shared/src/types.ts';
import { randomId } from './agent.ts';
import { ownDir } from './cleanup.ts';
import { Rng } from './fuzz-inputs.ts';
import { testSeed } from '../../shared/test/lib/seeded.ts';
import { nodeState } from './leaks.ts';
import { createNetns, type TestNetns } from './netns.ts';
import { startNode, type TestNode } from './node-netns.ts';

export const ROUNDS = {
  api: Number(process.env.MEMBRANE_FUZZ_API ?? 400),
  cni: Number(process.env.MEMBRANE_FUZZ_CNI ?? 120),
  docker: Number(process.env.MEMBRANE_FUZZ_DOCKER ?? 300),
};

export interface Answer {
  status: number;
  body: any;
  text: string;
}

export function raw(socketPath: string, method: string, p: string, body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : Buffer.from(body);
    const req = http.request(
      {
        socketPath,
        path: p,
        method,
        timeout: 30_000,
        headers: payload ? { 'Content-Type': 'application/json', 'Content-Length': payload.length } : {},
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown;
          try {
            parsed = JSON.parse(text);
          } catch {
            parsed = undefined;
          }
          resolve({ status: res.statusCode ?? 0, body: parsed, text });
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${p}: no answer in 30 s`)));
    req.on('error', reject);
    req.end(payload);
  });
}

export interface FuzzNode {
  node: TestNode;
  /** The libnetwork plugin's name and the directory its socket is in. */
  plugin: string;
  pluginDir: string;
  pods: TestNetns[];
  anchor: Endpoint;
  r: Rng;
  api(m: string, p: string, b?: string): Promise<Answer>;
  /** What a refused request must not change (cheap to read after every request). */
  view(): Promise<string>;
  /** The agent's own failures (error or fatal lines) since the last look: a refusal must not be one. */
  newFailures(): string[];
  /** Problems found (at most 20 kept); each fuzzer asserts it empty and clears it. */
  bad: string[];
  problem(what: string, input: string, a: { status?: number; text?: string }): void;
  /** Nothing leaked, the agent alive, no internal error in its log. */
  finish(t: Test): Promise<void>;
}

/** Starts the node (removed at the test's teardown) and prints the seed (`fixedSeed` unless FUZZ_SEED says). */
export async function startFuzzNode(t: Test, fixedSeed: number): Promise<FuzzNode> {
  const seed = testSeed('FUZZ_SEED', fixedSeed);
  t.comment(`seed ${seed} (FUZZ_SEED=${seed} repeats this run)`);
  const plugin = `mbrfz${randomId(3)}`;
  const pluginDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-fzplug-'));
  const releasePluginDir = ownDir(pluginDir);
  t.teardown(() => {
    fs.rmSync(pluginDir, { recursive: true, force: true });
    releasePluginDir();
  });
  const node = await startNode({
    extraArgs: [
      '--docker-plugin',
      plugin,
      '--docker-plugin-dir',
      pluginDir,
      '--docker-socket',
      path.join(pluginDir, 'no-docker.sock'),
    ],
  });
  t.teardown(() => node.cleanup());
  // The agent's own failures (error or fatal lines) since the last look: a refusal must not be one.
  let logAt = fs.statSync(node.agent.logFile).size;
  const newFailures = () => {
    const text = fs.readFileSync(node.agent.logFile, 'utf8');
    const lines = text
      .slice(logAt)
      .split('\n')
      .filter((l) => /"level":(50|60)/.test(l));
    logAt = text.length;
    return lines.map((l) => l.slice(0, 300));
  };
  const pods: TestNetns[] = [createNetns('mbz'), createNetns('mbz')];
  t.teardown(() => {
    for (const n of pods) n.remove();
  });
  const sock = node.agent.socket;
  const api = (m: string, p: string, b?: string) => raw(sock, m, p, b);
  const r = new Rng(seed);

  // An endpoint that stays: the label route needs one.
  const anchor = await node.agent.client.createEndpoint({
    containerId: `anchor-${randomId()}`,
    netns: pods[0].path,
    ifName: 'eth0',
    labels: { app: 'anchor' },
  });
  const empty = await nodeState(node.agent);
  const view = async () =>
    JSON.stringify(
      await Promise.all([
        api('GET', '/v1/endpoints').then((a) =>
          a.body.items.map((e: any) => `${e.containerId}/${e.ifName}/${e.identity}`).sort(),
        ),
        api('GET', '/v1/networks').then((a) => a.body.items.map((n: any) => n.name).sort()),
        api('GET', '/v1/ipam').then((a) => a.text),
        api('GET', '/v1/policy').then((a) => a.body.items.map((p: any) => `${p.name}@${p.revision}`).sort()),
      ]),
    );
  const bad: string[] = [];
  return {
    node,
    plugin,
    pluginDir,
    pods,
    anchor,
    r,
    api,
    view,
    newFailures,
    bad,
    problem(what, input, a) {
      if (bad.length < 20) bad.push(`${what}: ${a.status} ${String(a.text).slice(0, 300)} <- ${input.slice(0, 300)}`);
    },
    async finish(t) {
      t.same(await nodeState(node.agent), empty, 'nothing leaked: endpoints, addresses, links, routes, map entries, records');
      t.equal((await api('GET', '/v1/healthz')).status, 200, 'and the agent is alive');
      t.same(newFailures(), [], 'no internal error in its log');
    },
  };
}
