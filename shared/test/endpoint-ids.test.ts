// Endpoint ids index the datapath's per-endpoint arrays (ep_counters, ct_owned: bpf/lib/maps.h, sized
// MAX_ENDPOINTS with slot 0 unused): every id the agent hands out must have a slot, and the refusal
// past the last one must say why. The bound is read from the header, so the two cannot drift apart.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { EndpointIds } from '../src/endpoint/ids.ts';

const mapsH = readFileSync(join(import.meta.dirname, '../../bpf/lib/maps.h'), 'utf8');
const maxEndpoints = Number(/^#define MAX_ENDPOINTS (\d+)$/m.exec(mapsH)?.[1]);

t.test('ids run from 1 to the last slot of the datapath arrays, then a clear refusal', async (t) => {
  t.ok(maxEndpoints > 1, `MAX_ENDPOINTS read from bpf/lib/maps.h (${maxEndpoints})`);
  const ids = new EndpointIds();
  const got: number[] = [];
  for (let i = 1; i < maxEndpoints; i++) got.push(ids.reserve());
  t.equal(got[0], 1, 'the first id is 1 (slot 0 is unused)');
  t.equal(got.at(-1), maxEndpoints - 1, 'the last id is the arrays’ last slot');
  t.equal(new Set(got).size, got.length, 'no id handed out twice');
  t.throws(() => ids.reserve(), /no endpoint id left \(\d+ endpoints on this node\)/, 'one more is refused, saying why');
  ids.release(7);
  t.equal(ids.reserve(), 7, 'a released id is handed out again (lowest free first)');
});
