// Fuzzer of membrane-cni (stdin configuration and CNI_* variables, the real executable), against a
// real agent in a node netns of ours (lib/fuzz-node.ts): every failure is error JSON with a code of
// the spec's table; never a crash or a hang; a refused ADD changes nothing; at the end nothing is
// leaked (lib/leaks.ts). FUZZ_SEED=random searches, FUZZ_SEED=<n> repeats a run.
import t from 'tap';
import { randomId } from './lib/agent.ts';
import { asText, mutateDoc, mutateText, randomValue } from './lib/fuzz-inputs.ts';
import { ROUNDS, startFuzzNode } from './lib/fuzz-node.ts';
import { ensureCniBinary, invokeCni } from '../cni/test/lib/exec.ts';

ensureCniBinary();

// The CI default (FUZZ_SEED=random searches for new failures; see lib/fuzz-inputs.ts).
const SEED = 948996059;

t.test("membrane-cni fuzzer: CNI errors of the spec's table, no crash, no partial state, nothing leaked", async (t) => {
  const f = await startFuzzNode(t, SEED);
  const { node, r, view, newFailures, bad, problem, pods } = f;
  const sock = node.agent.socket;

  // ---- membrane-cni --------------------------------------------------------------------------------
  const VERBS = ['ADD', 'DEL', 'CHECK', 'STATUS', 'GC', 'VERSION'];
  const validConf = {
    cniVersion: '1.0.0',
    name: `fz-${node.agent.id}`,
    type: 'membrane-cni',
    agentSocket: sock,
    labels: { app: 'fzc' },
  };
  const nastyEnv = () => asText(randomValue(r));
  const added: { containerId: string; ifName: string }[] = [];
  const codes = new Map<number, number>();
  for (let i = 0; i < ROUNDS.cni; i++) {
    let conf: string;
    if (r.chance(0.6)) {
      const m = mutateDoc(r, validConf) as Record<string, unknown>;
      // Where the plugin writes (its queue next to agentSocket, its log) is the operator's, not input: keep ours.
      if (m && typeof m === 'object' && !Array.isArray(m)) {
        m.agentSocket = sock;
        delete m.logFile;
      }
      conf = JSON.stringify(m);
    } else {
      conf = r.chance(0.5) ? JSON.stringify(validConf) : mutateText(r, JSON.stringify(validConf));
    }
    const verb = r.chance(0.85) ? r.pick(['ADD', 'ADD', 'DEL', 'CHECK']) : r.chance(0.5) ? r.pick(VERBS) : nastyEnv();
    // Mostly the configuration is what is damaged (so that inputs reach the agent); sometimes one variable.
    const env = {
      containerId: `fzc-${randomId()}`,
      ifName: 'eth1',
      netns: pods[1].path,
      args: `K8S_POD_NAMESPACE=fz;K8S_POD_NAME=p${i}`,
    };
    if (r.chance(0.35)) env[r.pick(['containerId', 'ifName', 'netns', 'args'] as const)] = nastyEnv();
    const containerId = env.containerId;
    const before = await view();
    const o = await invokeCni(verb, conf, env);
    const input = `${verb} ${JSON.stringify(env)} ${conf}`;
    if (o.code === 0) {
      // Gone again at once (as a pod would be), so that the next ADD finds eth1 free in the pod.
      if (verb === 'ADD') {
        added.push({ containerId, ifName: env.ifName });
        await invokeCni('DEL', validConf, { containerId, ifName: env.ifName, netns: pods[1].path });
      }
      continue;
    }
    const e = o.out;
    codes.set(e?.code, (codes.get(e?.code) ?? 0) + 1);
    const clear =
      o.code === 1 &&
      e &&
      typeof e === 'object' &&
      [1, 2, 3, 4, 5, 6, 7, 11, 50, 102].includes(e.code) &&
      typeof e.msg === 'string' &&
      e.msg.length > 0 &&
      !/\n\s+at /.test(o.stdout);
    const failures = newFailures();
    if (!clear || failures.length)
      problem('membrane-cni', input, { status: o.code ?? -1, text: `${o.stdout} ${o.stderr.slice(-300)} ${failures.join(' ')}` });
    else if (verb === 'ADD' && (await view()) !== before)
      problem('membrane-cni ADD changed state although refused', input, { status: e.code, text: o.stdout });
  }
  t.same(
    bad,
    [],
    `membrane-cni: every failure a CNI error of the spec's table (${[...codes].map(([c, n]) => `${c}: ${n}`).join(', ')}), ${added.length} valid ADDs`,
  );
  bad.length = 0;

  await f.finish(t);
});
