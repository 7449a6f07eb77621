// The journal's record format and the raw file writes under it (journal.ts keeps the state and
// decides what to write when). A record is one line: `<crc32 of the JSON, 8 hex> <JSON>\n`; JSON
// never holds a raw newline, so a line without its newline is a torn write, and a wrong checksum or
// unreadable JSON is damage.
import fs from 'node:fs';
import zlib from 'node:zlib';
import { MembraneError } from '../errors.ts';
import { isRawJson } from './index.ts';

export type Change = { op: 'put'; key: string; value: unknown } | { op: 'del'; key: string };
/** A batch is one record: a crash or a damaged tail keeps all of its changes or none. */
export type Op = Change | { op: 'batch'; ops: Change[]; freeing?: boolean };

export const NEWLINE = 0x0a;

/** A queued change: its record bytes, and for a put the value's JSON (what memory will hold; for a
 *  batch, each put's, in order). `grows`: it adds state, so it may not use the room kept for deletions. */
export interface Encoded {
  op: Op;
  rec: Buffer;
  valueJson?: string;
  batchJson?: (string | undefined)[];
  grows: boolean;
}

/** One framed record. */
export function encodeRecord(op: Op): string {
  return encode(op).rec.toString('utf8');
}

/**
 * Serialises a change once: the same JSON goes to disk and into memory (a caller that changes the
 * object after put() changes neither). A value given as JSON text already (rawJson: a 10,000-rule
 * policy set whose parts were serialised when they were read) is not stringified again on the event
 * loop. The line equals JSON.stringify(op) for {op, key, value}.
 */
export function encode(op: Op): Encoded {
  let line: string;
  let valueJson: string | undefined;
  let batchJson: (string | undefined)[] | undefined;
  if (op.op === 'put') {
    valueJson = valueText(op);
    line = changeLine(op, valueJson);
  } else if (op.op === 'batch') {
    batchJson = op.ops.map((c) => (c.op === 'put' ? valueText(c) : undefined));
    const lines = op.ops.map((c, i) => changeLine(c, batchJson![i]));
    line = `{"op":"batch",${op.freeing ? '"freeing":true,' : ''}"ops":[${lines.join(',')}]}`;
  } else {
    line = JSON.stringify(op);
  }
  const text = `${zlib.crc32(line).toString(16).padStart(8, '0')} ${line}\n`;
  const grows = op.op === 'put' || (op.op === 'batch' && !op.freeing && op.ops.some((c) => c.op === 'put'));
  return { op, rec: Buffer.from(text), valueJson, batchJson, grows };
}

function valueText(op: { key: string; value: unknown }): string {
  const json = isRawJson(op.value) ? op.value.json : (JSON.stringify(op.value) as string | undefined);
  if (json === undefined) throw new TypeError(`store: the value of ${op.key} cannot be stored (${typeof op.value})`);
  return json;
}

function changeLine(c: Change, valueJson: string | undefined): string {
  return c.op === 'put' ? `{"op":"put","key":${JSON.stringify(c.key)},"value":${valueJson}}` : JSON.stringify(c);
}

/** The operation in one record line (without its newline), or why it is not one. */
export function decodeRecord(line: Buffer): { op: Op } | { error: string } {
  if (line.length > 0 && line[0] === 0x7b) {
    // A record written before framing existed: plain JSON, trusted as far as it parses.
    try {
      return checkOp(JSON.parse(line.toString('utf8')));
    } catch {
      return { error: 'unreadable JSON' };
    }
  }
  if (line.length < 10 || line[8] !== 0x20) return { error: 'no record frame' };
  const want = line.subarray(0, 8).toString('latin1');
  if (!/^[0-9a-f]{8}$/.test(want)) return { error: 'no record frame' };
  const json = line.subarray(9);
  if (zlib.crc32(json).toString(16).padStart(8, '0') !== want) return { error: 'checksum mismatch' };
  try {
    return checkOp(JSON.parse(json.toString('utf8')));
  } catch {
    return { error: 'unreadable JSON' };
  }
}

function checkOp(v: unknown): { op: Op } | { error: string } {
  const o = v as Op;
  if (o?.op === 'batch' && Array.isArray(o.ops) && o.ops.every(isChange)) return { op: o };
  if (isChange(o)) return { op: o };
  return { error: 'not a store operation' };
}

function isChange(v: unknown): v is Change {
  const o = v as Change;
  return !!o && typeof o.key === 'string' && (o.op === 'del' || (o.op === 'put' && 'value' in o));
}

/** The error a failed journal write gives its callers. */
export function writeError(file: string, e: unknown): MembraneError {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new MembraneError(
      'storage_full',
      `the agent's state disk is full: cannot write ${file} (${code}); nothing was changed, retry once there is room`,
      { cause: e },
    );
  }
  // Nothing wrong with the request (an I/O error): the caller may try again.
  return new MembraneError(
    'unavailable',
    `store: cannot write ${file}: ${(e as Error)?.message ?? String(e)}; nothing was changed`,
    { cause: e },
  );
}

export function allZero(b: Buffer): boolean {
  return b.equals(Buffer.alloc(b.length));
}

/** Writes all of `buf` at `position`, however many calls it takes. */
export function writeFully(fd: number, buf: Buffer, position: number): void {
  let off = 0;
  while (off < buf.length) {
    const n = fs.writeSync(fd, buf, off, buf.length - off, position + off);
    if (n <= 0) throw Object.assign(new Error(`short write: ${off} of ${buf.length} bytes written`), { code: 'EIO' });
    off += n;
  }
}
