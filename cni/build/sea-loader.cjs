// membrane-cni's SEA entry point. The SEA code cache (useCodeCache) only holds what V8 compiles eagerly:
// the bundle's top level. This loader runs the bundle (a SEA asset) with a V8 code cache recorded after
// training runs (cni/build/train.cjs), which also holds every function those runs compiled, so a plugin
// start does not compile them again. A rejected cache (other V8 flags, e.g. from NODE_OPTIONS) only
// costs the compile time back.
'use strict';
const sea = require('node:sea');
const vm = require('node:vm');
const source = Buffer.from(sea.getAsset('bundle.js')).toString('utf8');
const script = new vm.Script(`(function (exports, require, module, __filename, __dirname) {${source}\n})`, {
  filename: 'membrane-cni.js',
  cachedData: Buffer.from(sea.getAsset('bundle.cache')),
});
if (script.cachedDataRejected && process.env.MEMBRANE_CNI_TIMING)
  process.stderr.write('membrane-cni timing: code cache rejected\n');
script.runInThisContext()(module.exports, require, module, __filename, __dirname);
