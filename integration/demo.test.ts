// npm run demo (after setup: scripts/demo.ts): exits 0 having shown what it promises (a pod and a
// Docker container talking, a policy imported, one connection allowed and one dropped, the drop in
// `membrane observe` naming the policy, `membrane policy trace` explaining it), and leaves nothing
// behind: no process, mount, link, pin, netns or file of its run, checked here from outside.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { REPO } from './lib/agent.ts';
import { linkExists } from './lib/netns.ts';
import { mountsWith, processesWith } from '../scripts/demo/leftovers.ts';

t.test('npm run demo: the main job end to end, nothing left behind', async (t) => {
  const tag = `mbrdemo${crypto.randomBytes(3).toString('hex')}`;
  const env: NodeJS.ProcessEnv = { ...process.env, MEMBRANE_DEMO_ID: tag };
  delete env.NODE_EXTRA_CA_CERTS;
  delete env.NODE_OPTIONS; // tap's loader flags; the demo brings its own
  for (const k of Object.keys(env)) if (k.startsWith('TAP') || k.startsWith('_TAPJS')) delete env[k];
  const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/demo.ts'], {
    cwd: REPO,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => {
    out += d;
  });
  child.stderr.on('data', (d) => {
    out += d;
  });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  t.equal(code, 0, `the demo exits 0 (output below on failure)\n${code === 0 ? '' : out}`);

  const step = (n: number) =>
    out.slice(out.indexOf(`[${n}/7]`), out.indexOf(`[${n + 1}/7]`) > 0 ? out.indexOf(`[${n + 1}/7]`) : undefined);
  t.equal((step(4).match(/hello from web/g) ?? []).length, 2, 'before the policy both pods reach the Docker container');
  t.match(step(5), /created web-from-shop/, 'the policy is imported from its file');
  t.match(step(6), /\[pod shop\/client\] \$ curl[^\n]*\n\s+hello from web/, 'with it, shop/client still gets through');
  t.match(step(6), /\[pod guest\/stranger\] \$ curl[^\n]*\n\s+curl: \(28\)/, 'and guest/stranger times out');
  t.match(
    step(7),
    /guest\/stranger:\d+ \(ID:\d+\) -> \S+:80 .*DROPPED .*denied by policy web-from-shop/,
    'membrane observe shows the drop naming the policy',
  );
  t.match(step(7), /DENIED: 80\/tcp[\s\S]*denied by web-from-shop spec\.ingressDeny\[0\]/, 'membrane policy trace explains it');
  t.match(step(7), /ALLOWED: 80\/tcp[\s\S]*allowed by web-from-shop spec\.ingress\[0\]/, 'and the allowed one');
  const took = Number(/Done in ([\d.]+) s/.exec(out)?.[1]);
  t.ok(took > 0, `the demo says how long it took: ${took} s (the goal is under 60 s after setup)`);
  t.match(out, /nothing left behind/, 'the demo checked its own leftovers');

  // From outside: nothing carries the run's tag, and the endpoints' host veths are gone.
  t.same(processesWith(tag), [], 'no process of the run');
  t.same(mountsWith(tag), [], 'no mount (rootfs, netns, shm) of the run');
  t.notOk(linkExists(tag.slice(0, 15)), 'no host device');
  const veths = [...new Set(out.match(/\bmbr[0-9a-f]{11}\b/g) ?? [])];
  t.ok(veths.length >= 3, `the endpoint list showed the host veths (${veths.join(', ')})`);
  t.same(veths.filter(linkExists), [], 'none of them is left');
  t.notOk(fs.existsSync(`/sys/fs/bpf/${tag}`), 'no pins');
  t.same(
    fs.readdirSync('/tmp').filter((n) => n.startsWith(tag)),
    [],
    'no files',
  );
  t.notOk(spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.includes(tag), 'no named netns');
});
