// node --import tsx scripts/bench/conntrack.ts — not a test. The conntrack table design measured in
// the kernel (BPF_PROG_TEST_RUN, ns per packet as the kernel times the program): the wave-1 LRU hash,
// a preallocated hash and a hash without preallocation, each empty and half full: a new flow (SYN:
// policy + insert), its teardown (RST: delete) and an established packet; plus each table's memory.
// Root and bpffs needed. Interleaved rounds; medians.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { loadDatapath, removePins, type Datapath } from '../../shared/src/bpf/datapath.ts';
import { objGet, progTestRun } from '../../shared/src/bpf/libbpf.ts';
import { eth, ipv4, PROTO, TCP_FLAGS, tcp, udp } from '../../shared/src/bpf/packets.ts';
import { markdownTable, median } from './lib.ts';

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const CT_MAX = Number(process.env.BENCH_CT_MAX ?? 65536);
const FLOWS = Number(process.env.BENCH_FLOWS ?? 5000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);

const VARIANTS = [
  { name: 'LRU hash (wave 1)', flags: '-DMBR_CT_LRU' },
  { name: 'hash, preallocated', flags: '' },
  { name: 'hash, not preallocated', flags: '-DMBR_CT_NO_PREALLOC' },
];
const SRC = {
  hostIfindex: 1,
  endpointId: 31,
  identity: 3001,
  flags: 0,
  hostMac: '02:00:00:00:1f:01',
  containerMac: '02:00:00:00:1f:02',
  ips: ['10.253.0.1'],
};
const DST = {
  hostIfindex: 900031,
  endpointId: 32,
  identity: 3002,
  flags: 0,
  hostMac: '02:00:00:00:20:01',
  containerMac: '02:00:00:00:20:02',
  ips: ['10.253.0.2'],
};
const frame = (l4: Buffer, proto: number, dst = DST.ips[0]) =>
  eth(SRC.hostMac, SRC.containerMac, 0x0800, ipv4({ src: SRC.ips[0], dst, proto }, l4));

function build(flags: string, out: string): void {
  execFileSync('bash', [path.join(ROOT, 'scripts/build-bpf.sh')], {
    env: { ...process.env, FORCE: '1', BPF_OUT: out, BPF_CFLAGS: flags },
    stdio: 'ignore',
  });
}

function memlock(pin: string): number {
  const info = JSON.parse(execFileSync('bpftool', ['-j', 'map', 'show', 'pinned', pin], { encoding: 'utf8' }));
  return info.bytes_memlock as number;
}

interface Sample {
  syn: number;
  rst: number;
  est: number;
  memEmpty: number;
  memHalf: number;
}

function measure(object: string): Sample {
  const pinDir = `/sys/fs/bpf/mbb-ct-${randomBytes(4).toString('hex')}`;
  let dp: Datapath | undefined;
  let fd = -1;
  try {
    dp = loadDatapath({ objectPath: object, pinDir, ctMax: CT_MAX });
    dp.upsertEndpoint(SRC);
    dp.upsertEndpoint(DST);
    fd = objGet(path.join(pinDir, 'prog_from_container'));
    const cycle = (base: number) => {
      const syn: number[] = [],
        rst: number[] = [];
      for (let i = 0; i < FLOWS; i++) {
        const sport = 1024 + ((base + i) % 60000);
        syn.push(progTestRun(fd, frame(tcp(sport, 80, TCP_FLAGS.SYN, i), PROTO.TCP)).durationNs);
        rst.push(progTestRun(fd, frame(tcp(sport, 80, TCP_FLAGS.RST | TCP_FLAGS.ACK), PROTO.TCP)).durationNs);
      }
      return { syn: median(syn), rst: median(rst) };
    };
    const empty = cycle(0);
    const memEmpty = memlock(path.join(pinDir, 'conntrack'));
    // Half full: UDP flows to addresses of the world, which stay.
    for (let i = 0; i < CT_MAX / 2; i++)
      progTestRun(fd, frame(udp(2000 + (i & 0x3fff), 53), PROTO.UDP, `198.18.${(i >> 14) & 255}.${(i >> 6) & 255}`));
    const half = cycle(30000);
    const memHalf = memlock(path.join(pinDir, 'conntrack'));
    progTestRun(fd, frame(tcp(999, 80, TCP_FLAGS.SYN), PROTO.TCP));
    const est = progTestRun(fd, frame(tcp(999, 80, TCP_FLAGS.ACK), PROTO.TCP), { repeat: 100000 }).durationNs;
    process.stderr.write(
      `${path.basename(object)}: empty ${JSON.stringify(empty)} half ${JSON.stringify(half)} est ${est} mem ${memEmpty}/${memHalf}\n`,
    );
    return { syn: (empty.syn + half.syn) / 2, rst: (empty.rst + half.rst) / 2, est, memEmpty, memHalf };
  } finally {
    if (fd >= 0) fs.closeSync(fd);
    dp?.close();
    removePins(pinDir);
  }
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbb-ct-'));
try {
  const objects = VARIANTS.map((v, i) => {
    const out = path.join(dir, `v${i}.o`);
    build(v.flags, out);
    return out;
  });
  const samples = VARIANTS.map(() => [] as Sample[]);
  for (let r = 0; r < ROUNDS; r++)
    objects.forEach((o, i) => {
      samples[i].push(measure(o));
    });
  const rows = VARIANTS.map((v, i) => {
    const s = samples[i];
    const m = (f: (x: Sample) => number) => median(s.map(f));
    return [
      v.name,
      m((x) => x.syn).toFixed(0),
      m((x) => x.rst).toFixed(0),
      m((x) => x.est).toFixed(0),
      `${(m((x) => x.memEmpty) / 2 ** 20).toFixed(1)} / ${(m((x) => x.memHalf) / 2 ** 20).toFixed(1)}`,
    ];
  });
  process.stdout.write(
    `conntrack table of ${CT_MAX} entries, ${FLOWS} flows per measurement, median of ${ROUNDS} rounds (empty and half-full averaged); load ${os.loadavg()[0].toFixed(2)}\n\n`,
  );
  process.stdout.write(
    markdownTable(['table', 'new flow (SYN) ns', 'teardown (RST) ns', 'established ns', 'memory empty / half full (MiB)'], rows) +
      '\n',
  );
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
