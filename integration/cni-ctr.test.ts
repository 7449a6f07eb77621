// `ctr run --cni` (containerd 1.6) runs membrane-cni. ctr has no flags for CNI dirs: the conflist goes
// into the host's /etc/cni/net.d (named to sort first) and the plugin into /opt/cni/bin under a
// per-run type name; both are removed afterwards, and the test holds the host lock meanwhile.
// ctr passes CNI_NETNS=/proc/<pid>/ns/net, CNI_CONTAINERID=<namespace>-<id>, and DELs with no netns.
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startAgent, randomId, sleep } from './lib/agent.ts';
import { startContainerd } from './lib/cri-containerd.ts';
import { BB_REF } from './lib/images.ts';
import { cniInvocations, holdRuntimeHost } from './lib/runtimes.ts';
import { ensureCniBinary, runtimeEnv } from '../cni/test/lib/exec.ts';

const cniBin = ensureCniBinary();

t.test('ctr run --cni networks tasks through membrane-cni', async (t) => {
  await holdRuntimeHost(t, ['/var/lib/cni', '/etc/cni/net.d', '/etc/cni', '/opt/cni/bin', '/opt/cni']);
  const agent = await startAgent();
  t.teardown(() => agent.cleanup());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-ctr-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const ctrd = await startContainerd({ dir, plugins: {} });
  t.teardown(() => ctrd.stop());

  const type = `membrane-cni-t${agent.id}`;
  const net = `ctr-${agent.id}`;
  const plugin = path.join('/opt/cni/bin', type);
  const confFile = path.join('/etc/cni/net.d', `00-${net}.conflist`);
  fs.mkdirSync('/opt/cni/bin', { recursive: true });
  fs.mkdirSync('/etc/cni/net.d', { recursive: true });
  t.teardown(() => {
    fs.rmSync(plugin, { force: true });
    fs.rmSync(confFile, { force: true });
  });
  fs.symlinkSync(cniBin, plugin);
  const cniLog = path.join(dir, 'cni.log');
  fs.writeFileSync(
    confFile,
    JSON.stringify({
      cniVersion: '1.0.0',
      name: net,
      plugins: [{ type, agentSocket: agent.socket, stateDir: agent.stateDir, logFile: cniLog, logLevel: 'debug' }],
    }),
  );

  const prefix = agent.pools[0].split('.').slice(0, 3).join('\\.');
  const out = await ctrd.ctr(['run', '--rm', '--cni', BB_REF, `once-${randomId()}`, 'ip', '-4', '-o', 'addr', 'show', 'eth0'], {
    namespace: 'default',
  });
  t.match(out, new RegExp(`inet ${prefix}\\.\\d+/32`), "ctr run --rm --cni: eth0 from the agent's pool");
  t.same(await agent.client.listEndpoints(), [], 'the DEL after the task exited (empty CNI_NETNS) removed the endpoint');

  // a long-running task, and a second one that pings it
  const name = `srv-${randomId()}`;
  const server = spawn('ctr', ['-a', ctrd.socket, '-n', 'default', 'run', '--rm', '--cni', BB_REF, name, 'sleep', '300'], {
    env: runtimeEnv(),
    stdio: 'ignore',
  });
  const serverExit = new Promise((r) => server.once('exit', r));
  t.teardown(async () => {
    await ctrd.ctr(['task', 'kill', '-s', 'KILL', name], { namespace: 'default' }).catch(() => undefined);
    await serverExit;
  });
  let ep;
  for (let i = 0; i < 300 && !ep; i++) {
    ep = (await agent.client.listEndpoints()).find((e) => e.containerId === `default-${name}`);
    if (!ep) await sleep(100);
  }
  t.ok(ep, 'CNI_CONTAINERID is <namespace>-<id>');
  t.match(ep!.netns ?? '', /^\/proc\/\d+\/ns\/net$/, "CNI_NETNS is the task's /proc/<pid>/ns/net");
  const ip = ep!.ips[0].address.split('/')[0];
  const ping = await ctrd.ctr(['run', '--rm', '--cni', BB_REF, `ping-${randomId()}`, 'ping', '-c', '2', '-W', '2', ip], {
    namespace: 'default',
  });
  t.match(ping, /2 packets received/, 'one task pings the other');
  await ctrd.ctr(['task', 'kill', '-s', 'KILL', name], { namespace: 'default' });
  await serverExit;
  t.same(await agent.client.listEndpoints(), [], 'both endpoints gone once the tasks ended');
  const dels = cniInvocations(cniLog).filter((l) => l.verb === 'DEL');
  t.ok(dels.length >= 3 && dels.every((d) => d.netns === ''), 'ctr DELs without a netns, and they succeed');
});
