// tcx link pins (shared/src/bpf/tcx.ts) follow the host veths: an ADD that fails after its programs were
// attached, and a DEL of what a crashed ADD left, delete the veth, so the kernel detaches its links;
// their pins must go with it, or each such ADD leaves two detached links allocated in the bpffs dir.
// The agent runs inside a node netns of ours.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { randomId } from './lib/agent.ts';
import { startNode } from './lib/node-netns.ts';
import { createNetns } from './lib/netns.ts';
import { nodeState } from './lib/leaks.ts';
import { ensureCniBinary, invokeCni } from '../cni/test/lib/exec.ts';
import { attachmentId, hostVethName } from '../shared/src/endpoint/naming.ts';

ensureCniBinary();

t.test('an ADD that fails after the attach leaves no tcx pin behind', async (t) => {
  const node = await startNode({ ipv6: true });
  t.teardown(() => node.cleanup());
  const conf = { cniVersion: '1.0.0', name: `pins-${node.agent.id}`, type: 'membrane-cni', agentSocket: node.agent.socket };
  const ok = createNetns('mbp');
  const noV6 = createNetns('mbp');
  t.teardown(() => {
    ok.remove();
    noV6.remove();
  });
  const okId = `ok-${randomId(5)}`;
  t.equal((await invokeCni('ADD', conf, { containerId: okId, netns: ok.path })).code, 0, 'a dual-stack pod is added');
  const before = await nodeState(node.agent);
  t.equal(before.tcxPins.length, 2, `its two hooks are pinned: ${before.tcxPins.join(' ')}`);

  // A pod netns with IPv6 off: its IPv6 address cannot be added, after the veth and its programs.
  await noV6.exec('sysctl', ['-qw', 'net.ipv6.conf.all.disable_ipv6=1']);
  await noV6.exec('sysctl', ['-qw', 'net.ipv6.conf.default.disable_ipv6=1']);
  const failed = await invokeCni('ADD', conf, { containerId: `v6-${randomId(5)}`, netns: noV6.path });
  t.not(failed.code, 0, `the ADD fails: ${failed.out?.msg}`);
  t.same(await nodeState(node.agent), before, 'nothing left: endpoints, addresses, links, routes, maps, tcx pins');

  t.equal((await invokeCni('DEL', conf, { containerId: okId, netns: ok.path })).code, 0);
});

t.test("a crashed ADD's veth, with its programs linked, is removed by the runtime's DEL with its pins", async (t) => {
  const node = await startNode();
  t.teardown(() => node.cleanup());
  const conf = { cniVersion: '1.0.0', name: `pins-${node.agent.id}`, type: 'membrane-cni', agentSocket: node.agent.socket };
  const pod = createNetns('mbp');
  t.teardown(() => pod.remove());
  const before = await nodeState(node.agent);

  // What an ADD killed after its attach leaves: the host veth by the derived name, both programs
  // linked and pinned, no endpoint record.
  const cid = `crashed-${randomId(5)}`;
  const veth = hostVethName(attachmentId({ containerId: cid }), 'eth0');
  node.ip(['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', pod.path]);
  execFileSync('nsenter', [
    `--net=${node.ns.path}`,
    process.execPath,
    '--import',
    'tsx',
    path.join(import.meta.dirname, 'lib/tcx-attach-child.ts'),
    node.agent.bpffsDir,
    veth,
  ]);
  const left = await nodeState(node.agent);
  t.equal(left.tcxPins.length, before.tcxPins.length + 2, `the leftover's hooks are pinned: ${left.tcxPins.join(' ')}`);
  t.same(left.links, [...before.links, veth].sort(), 'and its veth is there');

  t.equal((await invokeCni('DEL', conf, { containerId: cid, netns: pod.path })).code, 0, 'the DEL succeeds');
  t.same(await nodeState(node.agent), before, 'the veth and its tcx pins are gone');
});
