// Another tool's tcx program for tests: one that passes every packet (TCX_PASS, which ends a tcx chain:
// wherever it runs ahead of ours, our enforcement never sees the packet), or one that drops every
// packet (it shows which packets reach a program after ours). Built with clang from a few lines of
// source into a temporary dir; each call loads a program of its own (the kernel refuses one program
// twice on a hook).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as bpf from '../../src/bpf/libbpf.ts';

export interface ForeignProgram {
  fd: number;
  id: number;
  /** Unloads it (links to it keep it alive until they are closed). */
  close(): void;
}

let built: string | undefined;

export function foreignPassProgram(verdict: 'pass' | 'drop' = 'pass'): ForeignProgram {
  if (!built) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbt-foreign-'));
    const src = path.join(dir, 'foreign.c');
    fs.writeFileSync(
      src,
      [
        'struct __sk_buff;',
        '__attribute__((section("tc"), used)) int foreign_pass(struct __sk_buff *skb) { return 0; /* TCX_PASS */ }',
        '__attribute__((section("tc"), used)) int foreign_drop(struct __sk_buff *skb) { return 2; /* TCX_DROP */ }',
        'char _license[] __attribute__((section("license"), used)) = "GPL";',
      ].join('\n'),
    );
    const out = path.join(dir, 'foreign.o');
    execFileSync('clang', ['-O2', '-target', 'bpf', '-c', src, '-o', out]);
    process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
    built = out;
  }
  const obj = bpf.openObject(built);
  bpf.loadObject(obj, built);
  const name = `foreign_${verdict}`;
  const fd = bpf.programFd(obj, name);
  return { fd, id: bpf.progId(fd, name), close: () => bpf.closeObject(obj) };
}

/** Links the program to an interface's tcx hook the way another tool would; the link lives as long
 *  as the returned fd (close it to detach). before: at the head of the chain (BPF_F_BEFORE). */
export function linkForeign(p: ForeignProgram, ifindex: number, direction: 'ingress' | 'egress', before = false): number {
  const type = direction === 'ingress' ? bpf.BPF_TCX_INGRESS : bpf.BPF_TCX_EGRESS;
  return bpf.linkCreate(p.fd, ifindex, type, `foreign tcx ifindex ${ifindex} ${direction}`, before ? bpf.BPF_F_BEFORE : 0);
}
