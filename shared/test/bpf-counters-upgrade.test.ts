// An upgrade from the per-CPU hash `endpoint_counters` (by host ifindex) to the per-CPU array
// `ep_counters` (by endpoint id, 0328850): the first load of the new object carries each configured
// endpoint's counts over and removes the old pin, and removePins knows the old name (root + bpffs
// needed; skipped otherwise).

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { loadDatapath, removePins } from '../src/bpf/datapath.ts';
import { mapUpdate, objGet } from '../src/bpf/libbpf.ts';
import { possibleCpus } from '../src/bpf/pins.ts';
import { requireBpf, ROOT as root } from './lib/bpf-harness.ts';

requireBpf();

const EP = {
  hostIfindex: 900011,
  endpointId: 21,
  identity: 1002,
  flags: 0,
  hostMac: '02:00:00:00:0c:01',
  containerMac: '02:00:00:00:0c:02',
  ips: ['10.251.0.21'],
};

/** The map an older agent pinned: a per-CPU hash of 32-byte counters by 4-byte ifindex. */
function createOldPin(pin: string): void {
  const args = ['map', 'create', pin, 'type', 'percpu_hash', 'key', '4', 'value', '32', 'entries', '16'];
  execFileSync('bpftool', [...args, 'name', 'endpoint_counters']);
}

execFileSync('bash', [path.join(root, 'scripts/build-bpf.sh')], { stdio: 'inherit' });

t.test('an old endpoint_counters pin: its counts adopted, the pin removed; removePins knows it', async (t) => {
  const dir = `/sys/fs/bpf/mbt-${randomBytes(4).toString('hex')}`;
  t.teardown(() => removePins(dir));
  fs.mkdirSync(dir);
  const objectPath = path.join(root, 'dist/bpf/endpoint.o');
  const first = loadDatapath({ objectPath, pinDir: dir });
  first.upsertEndpoint(EP);
  first.close();
  // What an older agent left: EP's counts (1 packet of 100 bytes each way on CPU 0) by its ifindex.
  const old = `${dir}/endpoint_counters`;
  createOldPin(old);
  const fd = objGet(old);
  const value = Buffer.alloc(32 * possibleCpus());
  for (const [i, n] of [1n, 100n, 1n, 100n].entries()) value.writeBigUInt64LE(n, i * 8);
  mapUpdate(fd, 'endpoint_counters', Buffer.from(Uint32Array.of(EP.hostIfindex).buffer), value);
  fs.closeSync(fd);
  const upgraded = loadDatapath({ objectPath, pinDir: dir });
  t.same(
    upgraded.counters(EP.hostIfindex),
    { rxPackets: 1n, rxBytes: 100n, txPackets: 1n, txBytes: 100n },
    'counts carried over',
  );
  upgraded.close();
  t.notOk(fs.existsSync(old), 'gone after the load');
  createOldPin(old);
  removePins(dir);
  t.notOk(fs.existsSync(dir), 'removePins knows it');
});
