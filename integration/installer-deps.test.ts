// The installer copies the node_modules the bundles load at run time; it reads their names from
// the bundles. A name it misses makes the installed agent fail when that code path first runs.
import t from 'tap';
import { externalRequires } from '../scripts/installer/runtime-deps.ts';

t.test('external packages are found whether required or imported on demand', async (t) => {
  const bundle = [
    'var k = require("koffi");',
    'const { default: Docker } = await import("dockerode");',
    'require("node:fs"); require("fs"); require("fs/promises"); require("./local"); import("../x");',
    'require("@grpc/grpc-js/build/src/index");',
  ].join('\n');
  t.same(externalRequires(bundle), ['@grpc/grpc-js', 'dockerode', 'koffi']);
});
