// Builds dist/bin/membrane-cni: esbuild bundle of cni/src/main.ts (CommonJS, minified, no native module)
// packed into a Node single executable application (SEA, useCodeCache). The SEA's main is a small loader
// (cni/build/sea-loader.cjs) that runs the bundle, a SEA asset, with a second V8 code cache recorded
// after training runs (cni/build/train.cjs): the SEA code cache only covers the bundle's top level, the
// trained one also the functions the verbs call (~5 ms less per plugin start here).
//   node scripts/build-cni.mjs [--out FILE] [--bundle-only]
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const outIdx = args.indexOf('--out');
const out = path.resolve(outIdx >= 0 ? args[outIdx + 1] : path.join(root, 'dist/bin/membrane-cni'));
const bundleOnly = args.includes('--bundle-only');
const SENTINEL = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

/** Fails the build if anything native (koffi, *.node) or the agent's heavy modules get pulled in. */
const noNative = {
  name: 'no-native',
  setup(b) {
    b.onResolve({ filter: /(^koffi$)|(\.node$)|(^pino$)|(^express$)/ }, (a) => ({
      errors: [{ text: `membrane-cni must not import ${a.path} (imported from ${path.relative(root, a.importer)})` }],
    }));
  },
};

/** node:http is never used by membrane-cni (cni/src/transport.ts speaks HTTP over node:net) but
 *  shared/src/api/client.ts imports it: an empty stub saves its ~10 ms of loading at every start. */
const stubHttp = {
  name: 'stub-node-http',
  setup(b) {
    b.onResolve({ filter: /^(node:)?http$/ }, () => ({ path: 'node:http', namespace: 'stub' }));
    b.onLoad({ filter: /.*/, namespace: 'stub' }, () => ({ contents: 'module.exports = {};', loader: 'js' }));
  },
};

/** node:net (with the node:stream under it) costs ~6 ms of a plugin start; the plugin talks to the
 *  agent over libuv's pipe handle (cni/src/pipe.ts), and the shared code it bundles imports node:net
 *  only for isIPv4/isIPv6 (shared/src/net/ip.ts): those load it on first use instead. Only these
 *  three are there: the plugin's own code must not import node:net (pipe.ts falls back to it through
 *  process.getBuiltinModule). */
const lazyNet = {
  name: 'lazy-node-net',
  setup(b) {
    b.onResolve({ filter: /^(node:)?net$/ }, () => ({ path: 'node:net', namespace: 'lazy-net' }));
    b.onLoad({ filter: /.*/, namespace: 'lazy-net' }, () => ({
      contents:
        "let net; const load = () => (net ??= process.getBuiltinModule('node:net'));\n" +
        'module.exports = { isIP: (s) => load().isIP(s), isIPv4: (s) => load().isIPv4(s), isIPv6: (s) => load().isIPv6(s) };',
      loader: 'js',
    }));
  },
};

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-cni-build-'));
try {
  const bundle = path.join(work, 'membrane-cni.cjs');
  const r = await build({
    entryPoints: [path.join(root, 'cni/src/main.ts')],
    outfile: bundle,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    minify: true,
    legalComments: 'none',
    plugins: [noNative, stubHttp, lazyNet],
    logLevel: 'warning',
    metafile: true,
  });
  const inputs = Object.keys(r.metafile.inputs);
  const size = fs.statSync(bundle).size;
  fs.mkdirSync(path.dirname(out), { recursive: true });
  if (bundleOnly) {
    fs.copyFileSync(bundle, out);
    console.log(`build-cni: bundle ${path.relative(root, out)} (${(size / 1024).toFixed(1)} KiB, ${inputs.length} modules)`);
  } else {
    const cache = path.join(work, 'bundle.cache');
    const train = spawnSync(process.execPath, [path.join(root, 'cni/build/train.cjs'), bundle, cache], {
      encoding: 'utf8',
      env: cleanEnv(),
    });
    if (train.status !== 0) throw new Error(`build-cni: training the code cache failed: ${train.stderr}`);
    const blob = path.join(work, 'sea.blob');
    const seaConfig = path.join(work, 'sea-config.json');
    fs.writeFileSync(
      seaConfig,
      JSON.stringify({
        main: path.join(root, 'cni/build/sea-loader.cjs'),
        output: blob,
        disableExperimentalSEAWarning: true,
        useCodeCache: true,
        assets: { 'bundle.js': bundle, 'bundle.cache': cache },
      }),
    );
    const sea = spawnSync(process.execPath, ['--experimental-sea-config', seaConfig], { encoding: 'utf8', env: cleanEnv() });
    if (sea.status !== 0) throw new Error(`build-cni: node --experimental-sea-config failed: ${sea.stderr}`);
    const exe = path.join(work, 'membrane-cni');
    fs.copyFileSync(process.execPath, exe);
    inject(exe, blob);
    fs.chmodSync(exe, 0o755);
    smokeTest(exe);
    // atomic replace: a runtime may be executing the old binary right now
    const tmp = `${out}.tmp-${process.pid}`;
    fs.copyFileSync(exe, tmp);
    fs.chmodSync(tmp, 0o755);
    fs.renameSync(tmp, out);
    console.log(
      `build-cni: ${path.relative(root, out)} (SEA, bundle ${(size / 1024).toFixed(1)} KiB, ${inputs.length} modules, node ${process.version})`,
    );
  }
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}

/** The executable answers VERSION with our versions, and V8 accepts the trained code cache. */
function smokeTest(exe) {
  const r = spawnSync(exe, [], {
    input: '{"cniVersion":"1.1.0"}',
    encoding: 'utf8',
    env: { ...cleanEnv(), CNI_COMMAND: 'VERSION', MEMBRANE_CNI_TIMING: '1' },
  });
  const v = JSON.parse(r.stdout || '{}');
  if (r.status !== 0 || !Array.isArray(v.supportedVersions) || !v.supportedVersions.includes('1.1.0'))
    throw new Error(`build-cni: smoke test failed: ${r.stdout}${r.stderr}`);
  if (/code cache rejected/.test(r.stderr)) throw new Error('build-cni: V8 rejected the trained code cache');
}

function cleanEnv() {
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  delete env.NODE_EXTRA_CA_CERTS;
  return env;
}

/** postject in a child: its LIEF core prints harmless "Can't find string offset" warnings; drop those. */
function inject(exe, blob) {
  const cli = createRequire(import.meta.url).resolve('postject/dist/cli.js');
  const r = spawnSync(process.execPath, [cli, exe, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', SENTINEL], {
    encoding: 'utf8',
    env: cleanEnv(),
  });
  const noise = /^(warning: Can't find string offset|Start injection|Injection done|💉)/;
  const rest = `${r.stdout}${r.stderr}`
    .replace(/\x1b\[[0-9;]*m/g, '')
    .split('\n')
    .filter((l) => l.trim() && !noise.test(l.trim()));
  if (r.status !== 0) throw new Error(`build-cni: postject failed (${r.status}): ${rest.join('\n')}`);
  if (rest.length) console.error(rest.join('\n'));
}
