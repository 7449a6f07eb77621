// The start of a message head that has not ended yet, kept from one read to the next (request-framing.ts,
// response-framing.ts). A head that comes a few bytes per read must cost linear time: joining the kept
// bytes and the next read with Buffer.concat, and searching the whole head for its end again, cost
// quadratic time, and a client that sent a 60 KiB head one byte per segment made the worker spend
// 1.25 s of CPU on it (a 4 KiB one 72 ms). So the kept bytes live in a buffer of their own with room to
// grow (doubling), the next read is appended in place, and the search for the head's end resumes where
// the last one stopped (`scanned`).
import { Buffer } from 'node:buffer'; // not the global accessor: proxy/raw-socket.ts says why

const FIRST_CAPACITY = 4096;

export class HeadCarry {
  /** The kept bytes are store[0, length); the rest is room for the next reads. */
  private store: Buffer | undefined = undefined;
  private length = 0;
  /** How many of the kept bytes were searched for the head's end already (all of them: it was not there). */
  scanned = 0;
  /** The head's first line was checked as far as it has to be (request-framing.ts: a method and a space). */
  startChecked = false;

  get pending(): boolean {
    return this.store !== undefined;
  }

  /** Keeps buf[from, buf.length), the start of a head that did not end there. `buf` may be what join()
   *  returned and `from` 0: the same bytes, kept where they are. */
  keep(buf: Buffer, from: number): void {
    const n = buf.length - from;
    if (this.store !== undefined && from === 0 && buf.buffer === this.store.buffer && buf.byteOffset === this.store.byteOffset) {
      this.length = n; // join()'s buffer, still one incomplete head
    } else {
      // New bytes, or a head that began after others in the buffer join() returned: those went on as
      // views of it (queued writes), so it is never written into again.
      this.store = Buffer.allocUnsafe(Math.max(FIRST_CAPACITY, 2 * n));
      buf.copy(this.store, 0, from);
      this.length = n;
      this.startChecked = false;
    }
    this.scanned = n;
  }

  /** The kept bytes followed by `chunk`, in one buffer; the head's end is to be searched for from
   *  `scanned` on. The caller walks it, then keep()s what is still incomplete, or clear()s. */
  join(chunk: Buffer): Buffer {
    const store = this.store!;
    const need = this.length + chunk.length;
    if (need <= store.length) {
      chunk.copy(store, this.length);
      return store.subarray(0, need);
    }
    const grown = Buffer.allocUnsafe(Math.max(2 * store.length, need));
    store.copy(grown, 0, 0, this.length);
    chunk.copy(grown, this.length);
    this.store = grown;
    return grown.subarray(0, need);
  }

  /** Nothing kept (the head ended; its bytes went on as views of the buffer join() returned). */
  clear(): void {
    this.store = undefined;
    this.length = 0;
    this.scanned = 0;
    this.startChecked = false;
  }

  /** The kept bytes themselves (an upgrade's held bytes), and nothing kept after. */
  take(): Buffer | undefined {
    const b = this.store?.subarray(0, this.length);
    this.clear();
    return b;
  }
}
