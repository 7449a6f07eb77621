// Offline images for containerd and podman, built by hand (no dockerd, no registry): one layer with the
// statically linked /bin/busybox of busybox-static plus applet symlinks, written as a docker-archive
// tarball (manifest.json + config + layer.tar) that `ctr images import` and `podman load` both read.
// Two tags share the layer: the plain busybox image and a pause image (sleep as PID 1).
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export const BB_TAG = 'membrane-test/bb:1';
export const PAUSE_TAG = 'membrane-test/pause:1';
/** How containerd names them after import (docker.io normalisation). */
export const BB_REF = `docker.io/${BB_TAG}`;
export const PAUSE_REF = `docker.io/${PAUSE_TAG}`;

/** The applets linked to /bin/busybox in every test image (docker's, containerd's, podman's). */
export const BUSYBOX_APPLETS = [
  'sh',
  'cat',
  'echo',
  'ip',
  'ifconfig',
  'ping',
  'ping6',
  'nc',
  'sleep',
  'usleep',
  'wget',
  'true',
  'false',
  'hostname',
  'grep',
  'touch',
  'rm',
  'mkdir',
  'ls',
  'route',
  'arp',
  'wc',
  'head',
  'date',
  'seq',
  'timeout',
  'kill',
  'ps',
  'env',
];

export function staticBusybox(): string {
  for (const p of ['/bin/busybox', '/usr/bin/busybox']) {
    if (fs.existsSync(p) && isStaticElf(p)) return p;
  }
  throw new Error('no statically linked busybox: apt-get install busybox-static');
}

/** A 64-bit little-endian ELF without a PT_INTERP program header needs no dynamic loader. */
function isStaticElf(file: string): boolean {
  const b = fs.readFileSync(file);
  if (b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2 || b[5] !== 1) return false;
  const phoff = Number(b.readBigUInt64LE(0x20));
  const phentsize = b.readUInt16LE(0x36);
  const phnum = b.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) if (b.readUInt32LE(phoff + i * phentsize) === 3) return false;
  return true;
}

/** Writes the docker-archive tarball into `dir` and returns its path. */
export function buildImageTarball(dir: string): string {
  const work = fs.mkdtempSync(path.join(dir, 'img-'));
  try {
    const rootfs = path.join(work, 'rootfs');
    fs.mkdirSync(path.join(rootfs, 'bin'), { recursive: true });
    for (const d of ['proc', 'sys', 'dev', 'etc', 'tmp', 'run']) fs.mkdirSync(path.join(rootfs, d));
    fs.copyFileSync(staticBusybox(), path.join(rootfs, 'bin/busybox'));
    fs.chmodSync(path.join(rootfs, 'bin/busybox'), 0o755);
    for (const a of BUSYBOX_APPLETS) fs.symlinkSync('busybox', path.join(rootfs, 'bin', a));
    fs.writeFileSync(path.join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/:/bin/sh\n');
    fs.writeFileSync(path.join(rootfs, 'etc/group'), 'root:x:0:\n');

    const archive = path.join(work, 'archive');
    fs.mkdirSync(archive);
    const layerTar = path.join(work, 'layer.tar');
    execFileSync('tar', [
      '--numeric-owner',
      '--owner=0',
      '--group=0',
      '--sort=name',
      '--mtime=@0',
      '-C',
      rootfs,
      '-cf',
      layerTar,
      '.',
    ]);
    const layerSha = sha256(fs.readFileSync(layerTar));
    fs.mkdirSync(path.join(archive, layerSha));
    fs.renameSync(layerTar, path.join(archive, layerSha, 'layer.tar'));

    const manifest = [
      { tag: BB_TAG, config: { Env: ['PATH=/bin'], Cmd: ['/bin/sh'] } },
      { tag: PAUSE_TAG, config: { Env: ['PATH=/bin'], Entrypoint: ['/bin/sleep', '2147483647'] } },
    ].map(({ tag, config }) => {
      const cfg = Buffer.from(
        JSON.stringify({
          architecture: 'amd64',
          os: 'linux',
          created: '1970-01-01T00:00:00Z',
          config,
          rootfs: { type: 'layers', diff_ids: [`sha256:${layerSha}`] },
          history: [{ created: '1970-01-01T00:00:00Z', created_by: 'membrane integration/lib/images.ts' }],
        }),
      );
      const cfgName = `${sha256(cfg)}.json`;
      fs.writeFileSync(path.join(archive, cfgName), cfg);
      return { Config: cfgName, RepoTags: [tag], Layers: [`${layerSha}/layer.tar`] };
    });
    fs.writeFileSync(path.join(archive, 'manifest.json'), JSON.stringify(manifest));
    const out = path.join(dir, 'membrane-test-images.tar');
    execFileSync('tar', ['--numeric-owner', '--owner=0', '--group=0', '-C', archive, '-cf', out, '.']);
    return out;
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

function sha256(b: Buffer): string {
  return crypto.createHash('sha256').update(b).digest('hex');
}
