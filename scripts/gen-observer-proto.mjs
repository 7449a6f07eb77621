// npm run gen:proto: embeds shared/proto/observer.proto in shared/src/flows/observer-proto.ts (the
// bundled agent and CLI load the proto offline from that string). shared/test/flows-proto.test.ts
// fails while the two differ.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const text = fs.readFileSync(path.join(root, 'shared/proto/observer.proto'), 'utf8');
const out = path.join(root, 'shared/src/flows/observer-proto.ts');
fs.writeFileSync(out, '// GENERATED from shared/proto/observer.proto by scripts/gen-observer-proto.mjs (npm run gen:proto). Do not edit.\n' +
  `export const OBSERVER_PROTO = ${JSON.stringify(text)};\n`);
console.log(`gen-observer-proto: wrote ${path.relative(root, out)}`);
