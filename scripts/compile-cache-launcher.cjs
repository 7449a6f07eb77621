#!/usr/bin/env node
// dist/bin/membrane-agent (copied there by scripts/build.mjs): runs the agent's bundle next to it,
// membrane-agent.js, with a V8 code cache. Node 20 has no module.enableCompileCache(), and compiling
// the 4.4 MB bundle and the functions a start runs is a third of an agent restart's CPU (bench:restore).
// The cache is made once per bundle and Node build, after the agent said it is ready (so it holds the
// functions the start compiled lazily too), and kept next to the bundle, owned by us and writable by no
// one else: V8 trusts what it deserialises. A missing, foreign or rejected cache only costs the compile.
'use strict';
const crypto = require('node:crypto');
const fs = require('node:fs');
const Module = require('node:module');
const path = require('node:path');
const vm = require('node:vm');

const bundle = path.join(__dirname, `${path.basename(__filename)}.js`);
const source = fs.readFileSync(bundle, 'utf8');
// V8 checks a cache against the source's length, not its content: the name carries a content hash.
const key = crypto.createHash('sha256').update(source).update(`${process.version} ${process.arch}`).digest('hex').slice(0, 16);
const cacheFile = path.join(__dirname, `.${path.basename(bundle)}.${key}.v8cache`);

function readCache() {
  let fd;
  try {
    fd = fs.openSync(cacheFile, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    const st = fs.fstatSync(fd);
    if (!st.isFile() || st.uid !== process.geteuid() || (st.mode & 0o022) !== 0) return undefined;
    return fs.readFileSync(fd);
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

function writeCache(script) {
  const tmp = `${cacheFile}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(tmp, script.createCachedData(), { mode: 0o600, flag: 'wx' });
    fs.renameSync(tmp, cacheFile);
    // Caches of earlier bundles or Node builds are of no use any more.
    const prefix = `.${path.basename(bundle)}.`;
    for (const f of fs.readdirSync(__dirname))
      if (f.startsWith(prefix) && f.endsWith('.v8cache') && path.join(__dirname, f) !== cacheFile)
        fs.rmSync(path.join(__dirname, f), { force: true });
  } catch {
    fs.rmSync(tmp, { force: true }); // a read-only install: no cache, as before
  }
}

const cachedData = readCache();
const script = new vm.Script(Module.wrap(source.replace(/^#!.*/, '')), {
  filename: bundle,
  cachedData,
  importModuleDynamically: vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
});
if (!cachedData || script.cachedDataRejected) process.once('membrane:ready', () => setImmediate(() => writeCache(script)));
const mod = new Module(bundle, null);
mod.filename = bundle;
mod.paths = Module._nodeModulePaths(__dirname);
mod.loaded = true;
script.runInThisContext().call(mod.exports, mod.exports, Module.createRequire(bundle), mod, bundle, __dirname);
