// npm run build: the datapath object and the executables in dist/.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');
fs.mkdirSync(path.join(dist, 'bin'), { recursive: true });
// The bundles are CommonJS; the repo root is "type": "module".
fs.writeFileSync(path.join(dist, 'package.json'), '{ "type": "commonjs" }\n');

execFileSync('bash', [path.join(root, 'scripts/build-bpf.sh')], { stdio: 'inherit' });

const executables = [
  // The agent's bundle is membrane-agent.js; membrane-agent runs it with a V8 code cache
  // (scripts/compile-cache-launcher.cjs): a restart compiles nothing it compiled before.
  { name: 'membrane-agent.js', entry: 'shared/src/agent/main.ts', launcher: 'membrane-agent' },
  { name: 'membrane', entry: 'shared/src/cli/main.ts' },
  { name: 'membrane-operator', entry: 'shared/src/operator/main.ts' },
  { name: 'membrane-relay', entry: 'shared/src/relay/main.ts' },
  { name: 'membrane-proxy', entry: 'shared/src/l7/proxy/worker-main.ts' },
  // Not a command: the agent's policy-reading worker thread (policy/parse-offloop.ts).
  { name: 'membrane-policy-worker', entry: 'shared/src/policy/parse-worker.ts' },
  // Not a command: the DNS proxy's UDP worker threads (dns/workers.ts).
  { name: 'membrane-dns-worker', entry: 'shared/src/dns/worker.ts' },
];
await Promise.all(
  executables.map(({ name, entry }) =>
    build({
      entryPoints: [path.join(root, entry)],
      outfile: path.join(dist, 'bin', name),
      bundle: true,
      platform: 'node',
      target: 'node20',
      format: 'cjs',
      // import() becomes a require: the launcher runs the agent's bundle from a V8 code cache, and Node 20
      // loses a cached script's dynamic-import callback (ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING on the
      // second start, e.g. loading dockerode). Every external here is CommonJS, so nothing is lost.
      supported: { 'dynamic-import': false },
      // Native modules (koffi; dockerode pulls in ssh2 and cpu-features) load from node_modules at run
      // time; esbuild cannot bundle .node files. etcd3 reads its .proto files next to its own code.
      external: ['koffi', 'dockerode', 'etcd3', 'cockatiel'],
      banner: { js: '#!/usr/bin/env node' },
      sourcemap: 'linked',
      logLevel: 'warning',
    }),
  ),
);
for (const { name } of executables) {
  const file = path.join(dist, 'bin', name);
  // One non-ASCII character anywhere (esbuild escapes strings with charset 'ascii', not the comments it
  // keeps, e.g. zod's locale notes) makes V8 hold the whole source as a two-byte string: 8.7 MB of
  // the agent's heap instead of 4.4. Escaped, such a comment reads the same to everyone.
  const code = fs.readFileSync(file, 'utf8');
  const ascii = code.replace(/[^\x00-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  if (ascii !== code) fs.writeFileSync(file, ascii);
  fs.chmodSync(file, 0o755);
}
for (const { launcher } of executables.filter((e) => e.launcher)) {
  const file = path.join(dist, 'bin', launcher);
  fs.copyFileSync(path.join(root, 'scripts/compile-cache-launcher.cjs'), file);
  fs.chmodSync(file, 0o755);
}

const cniBuild = path.join(root, 'scripts/build-cni.mjs');
if (fs.existsSync(cniBuild)) execFileSync(process.execPath, [cniBuild], { stdio: 'inherit' });
console.log(
  'build: dist/bpf/endpoint.o, dist/bin/{' +
    [
      ...executables.flatMap((e) => (e.launcher ? [e.launcher, e.name] : [e.name])),
      fs.existsSync(cniBuild) ? 'membrane-cni' : null,
    ]
      .filter(Boolean)
      .join(',') +
    '}',
);
