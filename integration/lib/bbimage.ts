// A busybox-static image imported offline (no registry here): one layer with /bin/busybox and applet
// symlinks, `docker import`ed with a CMD and a label so image labels can be tested.
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import type { Dockerd } from './dockerd.ts';
import { BUSYBOX_APPLETS, staticBusybox } from './images.ts';

export const BB_IMAGE = 'membrane-test/bb:1';
/** Label baked into the image (to check that image labels reach the endpoint). */
export const BB_IMAGE_LABEL = { key: 'org.membrane.test.image', value: 'busybox' };

/** Import the image into `d` unless it is there already. Returns the image reference. */
export async function ensureBusyboxImage(d: Dockerd): Promise<string> {
  const have = await d.dockerTry(['image', 'inspect', '--format', '{{.Id}}', BB_IMAGE]);
  if (have.code === 0) return BB_IMAGE;
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mbr-bbimg-'));
  try {
    const bin = path.join(dir, 'rootfs', 'bin');
    await fsp.mkdir(bin, { recursive: true });
    await fsp.copyFile(staticBusybox(), path.join(bin, 'busybox'));
    await fsp.chmod(path.join(bin, 'busybox'), 0o755);
    for (const a of BUSYBOX_APPLETS) await fsp.symlink('busybox', path.join(bin, a));
    for (const sub of ['tmp', 'etc', 'proc', 'sys', 'dev']) await fsp.mkdir(path.join(dir, 'rootfs', sub));
    const tar = spawnSync('tar', ['-C', path.join(dir, 'rootfs'), '-cf', '-', '.'], { maxBuffer: 64 << 20 });
    if (tar.status !== 0) throw new Error(`tar of the busybox rootfs failed: ${tar.stderr}`);
    await d.docker(
      [
        'import',
        '--change',
        'CMD ["sh"]',
        '--change',
        'ENV PATH=/bin',
        '--change',
        `LABEL ${BB_IMAGE_LABEL.key}=${BB_IMAGE_LABEL.value}`,
        '-',
        BB_IMAGE,
      ],
      { input: tar.stdout, timeoutMs: 60_000 },
    );
    return BB_IMAGE;
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}
