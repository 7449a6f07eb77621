// What the container-runtime tests (containerd's CRI, ctr, podman) share: the host they run on one
// at a time, the log membrane-cni wrote for them, and podman's private configuration.
import fs from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { absentNow, hostLock, removeIfOnly } from '../../cni/test/lib/host.ts';

/** Holds the host for this runtime test (one at a time: they share libcni's cache dir and
 *  runtime-global dirs) until `t` ends; then removes those of `paths` that did not exist before,
 *  if all they hold matches `keep`. */
export async function holdRuntimeHost(t: Test, paths: string[], keep?: RegExp): Promise<void> {
  const unlock = await hostLock('cni-runtimes');
  const created = absentNow(paths);
  t.teardown(() => {
    removeIfOnly(created, keep);
    unlock();
  });
}

/** What membrane-cni logged for each time a runtime invoked it (logLevel debug: verb, containerId, netns). */
export function cniInvocations(logFile: string): { verb: string; containerId: string; netns: string }[] {
  return fs
    .readFileSync(logFile, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l))
    .filter((l) => l.msg === 'invoked');
}

/** podman's own dirs under `dir` (bin/ with membrane-cni linked in, net.d/, tmp/) and a
 *  containers.conf there: the CNI backend, private dirs, and the README's lowered default_ulimits
 *  (no CAP_SYS_RESOURCE here). Returns the conf's path and the CNI dirs. */
export function podmanConfig(
  dir: string,
  cniBin: string,
  defaultNetwork?: string,
): { conf: string; binDir: string; confDir: string } {
  const binDir = path.join(dir, 'bin');
  const confDir = path.join(dir, 'net.d');
  for (const d of [binDir, confDir, path.join(dir, 'tmp')]) fs.mkdirSync(d, { recursive: true });
  fs.symlinkSync(cniBin, path.join(binDir, 'membrane-cni'));
  const conf = path.join(dir, 'containers.conf');
  fs.writeFileSync(
    conf,
    `[containers]
netns = "bridge"
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "${dir}/events.log"
runtime = "runc"
tmp_dir = "${dir}/tmp"
volume_path = "${dir}/volumes"
[network]
network_backend = "cni"
cni_plugin_dirs = ["${binDir}", "/usr/lib/cni"]
network_config_dir = "${confDir}"
${defaultNetwork ? `default_network = "${defaultNetwork}"\n` : ''}`,
  );
  return { conf, binDir, confDir };
}
