// BPF_PROG_TEST_RUN: run a loaded program on a packet without a device (unit tests, fuzzing).
import koffi from 'koffi';
import { bind, check } from './native.ts';

export interface TestRunResult {
  retval: number;
  data: Buffer;
  durationNs: number;
}

/** The buffers whose bare addresses the kernel is reading right now: a GC root for the call. */
const inKernel: Buffer[] = [];

/** BPF_PROG_TEST_RUN with a packet; returns the program's verdict and the (possibly rewritten) packet.
 *  `ifindex` sets skb->ifindex through the __sk_buff context (the device must exist; default lo). */
export function progTestRun(progFd: number, packet: Buffer, opts: { repeat?: number; ifindex?: number } = {}): TestRunResult {
  // Every buffer whose address goes to the kernel is backed by its own ArrayBuffer: V8 keeps a small
  // typed array (<= 64 bytes, as Buffer.alloc(44) and most fuzz frames are) on the JS heap, where a GC
  // between koffi.address and the call can move it. And the kernel gets bare addresses, which are no
  // reference: once `input` and `ctx` are last used, optimized code lets a GC (koffi allocates while it
  // marshals `run`) free their memory before the kernel reads it: `inKernel` holds them through the
  // call. Both showed in bpf-fuzz under load as a rare EINVAL (a garbage ctx) or a verdict on a frame
  // the fuzzer never sent (reasons 130/139, decided from L2 alone), about 1 run in 14.
  const offHeap = (n: number) => Buffer.from(new ArrayBuffer(n));
  const input = offHeap(packet.length);
  packet.copy(input);
  const out = offHeap(packet.length + 256);
  // struct __sk_buff up to and including `ifindex` (offset 40); every other field must stay zero.
  const ctx = offHeap(44);
  ctx.writeUInt32LE(opts.ifindex ?? 0, 40);
  const run = {
    sz: 80,
    data_in: koffi.address(input),
    data_out: koffi.address(out),
    data_size_in: input.length,
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
  inKernel.push(input, out, ctx);
  try {
    check(bind().prog_test_run_opts(progFd, run), 'bpf_prog_test_run_opts', `prog fd ${progFd}`);
  } finally {
    inKernel.length = 0;
  }
  return { retval: run.retval, data: Buffer.from(out.subarray(0, run.data_size_out)), durationNs: run.duration };
}
