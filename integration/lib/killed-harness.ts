// A test file's stand-in for integration/harness-cleanup.test.ts: creates what real test files
// create through the harness (a node netns, a pod netns, an agent with its pin and state dirs and
// host device, an endpoint of that agent's in the pod netns, a long-running process inside a netns),
// prints their names as one JSON line, then either waits to be killed (`wait`) or crashes (`crash`)
// without running any teardown.
import { randomId, startAgent } from './agent.ts';
import { createNetns } from './netns.ts';

const mode = process.argv[2] ?? 'wait';
const node = createNetns('mbk');
const pod = createNetns('mbk');
// The agent on the host, like most test files': its host device and the endpoint's host veth are
// the machine's links.
const agent = await startAgent();
const ep = await agent.client.createEndpoint({ containerId: `killed-${randomId()}`, netns: pod.path, ifName: 'eth0' });
const sleeper = pod.spawn('sleep', ['600']);
process.stdout.write(
  `${JSON.stringify({
    netns: [node.name, pod.name],
    bpffsDir: agent.bpffsDir,
    stateDir: agent.stateDir,
    hostDevice: agent.hostDevice,
    hostVeth: ep.hostIfName,
    pids: [agent.pid(), sleeper.pid],
  })}\n`,
);
if (mode === 'crash')
  setTimeout(() => {
    throw new Error('crash on purpose');
  }, 100);
else setInterval(() => undefined, 60_000);
