// npm run gen:proto: embeds shared/proto/**/*.proto in shared/src/flows/protos.generated.ts (the
// bundled agent and CLI load the protos offline from those strings). shared/test/flows-proto.test.ts
// fails while the two differ.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dir = path.join(root, 'shared/proto');
const files = {};
for (const name of fs
  .readdirSync(dir, { recursive: true })
  .map(String)
  .filter((f) => f.endsWith('.proto'))
  .sort()) {
  files[name] = fs.readFileSync(path.join(dir, name), 'utf8');
}
const out = path.join(root, 'shared/src/flows/protos.generated.ts');
fs.writeFileSync(
  out,
  '// GENERATED from shared/proto/**/*.proto by scripts/gen-observer-proto.mjs (npm run gen:proto). Do not edit.\n' +
    `export const PROTO_FILES: Record<string, string> = ${JSON.stringify(files, null, 1)};\n`,
);
console.log(`gen-observer-proto: wrote ${path.relative(root, out)} (${Object.keys(files).length} files)`);
