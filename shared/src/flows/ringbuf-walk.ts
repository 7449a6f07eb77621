// The consumer side of a BPF_MAP_TYPE_RINGBUF, as pure logic over memory views (the reader maps
// the ring; tests hand in plain buffers). Mirrors libbpf's ringbuf_process_ring():
//   * positions are byte counters that only grow; a record starts at (pos % size) in the data area;
//   * each record has an 8-byte header: u32 len with BUSY (bit 31, still being written) and
//     DISCARD (bit 30, producer gave it up) flags, then u32 page offset (kernel-internal);
//   * records occupy round_up(len + 8, 8) bytes; the data area is mapped twice back to back, so a
//     record that wraps is still contiguous in the view.
// The header must be read with acquire semantics (the kernel clears BUSY with a release store):
// Atomics.load gives that and also stops the JIT from caching the value across iterations.
import { HOST_LITTLE_ENDIAN } from '../net/index.ts';

export const RINGBUF_BUSY_BIT = 0x80000000;
export const RINGBUF_DISCARD_BIT = 0x40000000;
export const RINGBUF_HDR_SIZE = 8;

export interface RingData {
  /** The data area, 2 × size bytes (double mapping). */
  data: Buffer;
  /** The same memory as 32-bit words, for atomic header loads. */
  words: Uint32Array;
  /** Data area size in bytes: a power of two, a multiple of the page size. */
  size: number;
}

export interface WalkResult {
  /** The new consumer position: everything before it may be overwritten by the producer. */
  consumer: number;
  /** Records handed to onRecord (discarded ones are skipped and not counted). */
  records: number;
  /** Stopped at a record still being written (more will follow shortly). */
  busy: boolean;
}

/** The bytes a record with this header takes: its header, its data, padding to 8. */
const recordSpan = (hdr: number): number => ((hdr & 0x3fffffff) + RINGBUF_HDR_SIZE + 7) & ~7; // len without BUSY and DISCARD

/** Hands every committed record in [consumer, producer) to onRecord, up to `max` of them, and
 *  records of up to `maxBytes` from `consumer` in all (a first record longer than that all the same). */
export function walkRing(
  ring: RingData,
  consumer: number,
  producer: number,
  max: number,
  onRecord?: (data: Buffer, offset: number, len: number) => void,
  maxBytes = Number.POSITIVE_INFINITY,
): WalkResult {
  let pos = consumer;
  let records = 0;
  while (pos < producer && records < max) {
    const off = pos % ring.size; // not `&`: positions outgrow 32 bits, `%` stays exact below 2^53
    const hdr = Atomics.load(ring.words, off >>> 2) >>> 0;
    if (hdr & RINGBUF_BUSY_BIT) return { consumer: pos, records, busy: true };
    const span = recordSpan(hdr);
    if (pos + span - consumer > maxBytes && pos > consumer) break;
    if (!(hdr & RINGBUF_DISCARD_BIT)) {
      onRecord?.(ring.data, off + RINGBUF_HDR_SIZE, hdr & 0x3fffffff);
      records++;
    }
    pos += span;
  }
  return { consumer: pos, records, busy: false };
}

/** Hands every record of a span of committed ones (as walkRing passed over them: headers included)
 *  at buf[start..start+len) to onRecord, discarded ones skipped: the walk over a copy of a span. The
 *  headers are host-order words, read bytewise (a copy need not be word-aligned). */
export function forEachRecord(
  buf: Buffer,
  start: number,
  len: number,
  onRecord: (data: Buffer, offset: number, len: number) => void,
): void {
  const end = start + len;
  for (let o = start; o + RINGBUF_HDR_SIZE <= end; ) {
    const hdr = HOST_LITTLE_ENDIAN
      ? (buf[o] | (buf[o + 1] << 8) | (buf[o + 2] << 16) | (buf[o + 3] << 24)) >>> 0
      : ((buf[o] << 24) | (buf[o + 1] << 16) | (buf[o + 2] << 8) | buf[o + 3]) >>> 0;
    if (!(hdr & RINGBUF_DISCARD_BIT)) onRecord(buf, o + RINGBUF_HDR_SIZE, hdr & 0x3fffffff);
    o += recordSpan(hdr);
  }
}

/** A ring as the kernel would lay it out, for tests: write records, get a RingData back. */
export function fakeRing(size: number): RingData & { write(pos: number, payload: Buffer, flags?: number): number } {
  const buf = Buffer.alloc(size * 2);
  const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.length / 4);
  return {
    data: buf,
    words,
    size,
    write(pos, payload, flags = 0) {
      const off = pos % size;
      // Write through both halves the way the double mapping would show it.
      const rec = Buffer.alloc(RINGBUF_HDR_SIZE + payload.length);
      rec.writeUInt32LE((payload.length | flags) >>> 0, 0);
      payload.copy(rec, RINGBUF_HDR_SIZE);
      for (let i = 0; i < rec.length; i++) {
        const at = (off + i) % size;
        buf[at] = rec[i];
        buf[at + size] = rec[i];
      }
      return pos + ((payload.length + RINGBUF_HDR_SIZE + 7) & ~7);
    },
  };
}
