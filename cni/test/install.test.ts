// scripts/install-cni: installs the executable and an example conflist, idempotently.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ensureCniBinary, REPO, runtimeEnv } from './lib/exec.ts';
import { tmpDir } from './lib/inproc.ts';

t.test('install-cni', async (t) => {
  ensureCniBinary();
  const dir = tmpDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const bin = path.join(dir, 'bin'),
    conf = path.join(dir, 'net.d');
  fs.mkdirSync(bin);
  fs.symlinkSync('/usr/lib/cni/portmap', path.join(bin, 'portmap'));
  const run = (...args: string[]) =>
    execFileSync(path.join(REPO, 'scripts/install-cni'), ['--bin-dir', bin, '--conf-dir', conf, ...args], {
      encoding: 'utf8',
      env: runtimeEnv(),
    });
  t.match(run('--name', 'k8s', '--socket', '/run/x.sock'), /10-k8s\.conflist/);
  const list = JSON.parse(fs.readFileSync(path.join(conf, '10-k8s.conflist'), 'utf8'));
  t.same(
    list.plugins.map((p: { type: string }) => p.type),
    ['membrane-cni', 'portmap'],
    'portmap chained when it is in the bin dir',
  );
  t.equal(list.plugins[0].agentSocket, '/run/x.sock');
  const v = JSON.parse(
    execFileSync(path.join(bin, 'membrane-cni'), { input: '{}', env: runtimeEnv({ CNI_COMMAND: 'VERSION' }), encoding: 'utf8' }),
  );
  t.ok(v.supportedVersions.includes('1.1.0'), 'installed executable answers VERSION');
  fs.writeFileSync(path.join(conf, '10-k8s.conflist'), '{"mine":true}');
  t.match(run('--name', 'k8s'), /exists, left as it is/, 'an existing conflist is kept');
  t.equal(fs.readFileSync(path.join(conf, '10-k8s.conflist'), 'utf8'), '{"mine":true}');
  run('--name', 'k8s', '--force');
  t.ok(JSON.parse(fs.readFileSync(path.join(conf, '10-k8s.conflist'), 'utf8')).plugins, '--force overwrites');
});

t.test("install-cni --launcher: Node never sees the runtime's NODE_OPTIONS / NODE_EXTRA_CA_CERTS", async (t) => {
  ensureCniBinary();
  const dir = tmpDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  execFileSync(path.join(REPO, 'scripts/install-cni'), ['--bin-dir', dir, '--no-conf', '--launcher'], { env: runtimeEnv() });
  t.ok(fs.existsSync(path.join(dir, 'membrane-cni.sea')));
  const env = runtimeEnv({
    CNI_COMMAND: 'VERSION',
    NODE_OPTIONS: '--require /nonexistent/hook.js',
    NODE_EXTRA_CA_CERTS: '/nonexistent/ca.pem',
  });
  const out = execFileSync(path.join(dir, 'membrane-cni'), { input: '{}', env, encoding: 'utf8' });
  t.ok(JSON.parse(out).supportedVersions, 'runs although NODE_OPTIONS would break a bare Node start');
});
