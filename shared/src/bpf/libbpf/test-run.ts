// BPF_PROG_TEST_RUN: run a loaded program on a packet without a device (unit tests, fuzzing).
import koffi from 'koffi';
import { bind, check } from './native.ts';

export interface TestRunResult {
  retval: number;
  data: Buffer;
  durationNs: number;
}

/** BPF_PROG_TEST_RUN with a packet; returns the program's verdict and the (possibly rewritten) packet.
 *  `ifindex` sets skb->ifindex through the __sk_buff context (the device must exist; default lo). */
export function progTestRun(progFd: number, packet: Buffer, opts: { repeat?: number; ifindex?: number } = {}): TestRunResult {
  const out = Buffer.alloc(packet.length + 256);
  // struct __sk_buff up to and including `ifindex` (offset 40); every other field must stay zero.
  const ctx = Buffer.alloc(44);
  ctx.writeUInt32LE(opts.ifindex ?? 0, 40);
  const run = {
    sz: 80,
    data_in: koffi.address(packet),
    data_out: koffi.address(out),
    data_size_in: packet.length,
    data_size_out: out.length,
    ctx_in: opts.ifindex ? koffi.address(ctx) : 0n,
    ctx_out: 0n,
    ctx_size_in: opts.ifindex ? ctx.length : 0,
    ctx_size_out: 0,
    retval: 0,
    repeat: opts.repeat ?? 1,
    duration: 0,
    flags: 0,
    cpu: 0,
    batch_size: 0,
  };
  check(bind().prog_test_run_opts(progFd, run), 'bpf_prog_test_run_opts', `prog fd ${progFd}`);
  return { retval: run.retval, data: Buffer.from(out.subarray(0, run.data_size_out)), durationNs: run.duration };
}
