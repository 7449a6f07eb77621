// Host byte order. BPF maps, ring buffer records and per-CPU values hold integers in the byte order of
// the machine that runs the datapath (and the agent next to it); packet fields (ports) stay in
// network order and are read with readUInt16BE where they are decoded.

/** Tested on a typed array rather than node:os, which membrane-cni would otherwise load at every start. */
export const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export const readHostU32: (buf: Buffer, offset: number) => number = HOST_LITTLE_ENDIAN
  ? (buf, offset) => buf.readUInt32LE(offset)
  : (buf, offset) => buf.readUInt32BE(offset);

export const readHostU64: (buf: Buffer, offset: number) => bigint = HOST_LITTLE_ENDIAN
  ? (buf, offset) => buf.readBigUInt64LE(offset)
  : (buf, offset) => buf.readBigUInt64BE(offset);

/** A u64 as a double (exact below 2^53: counters and nanosecond timestamps of 104 days). */
export const readHostU64Number: (buf: Buffer, offset: number) => number = HOST_LITTLE_ENDIAN
  ? (buf, offset) => buf.readUInt32LE(offset + 4) * 0x1_0000_0000 + buf.readUInt32LE(offset)
  : (buf, offset) => buf.readUInt32BE(offset) * 0x1_0000_0000 + buf.readUInt32BE(offset + 4);

export function writeHostU16(buf: Buffer, offset: number, value: number): void {
  if (HOST_LITTLE_ENDIAN) buf.writeUInt16LE(value, offset);
  else buf.writeUInt16BE(value, offset);
}

export function writeHostU32(buf: Buffer, offset: number, value: number): void {
  if (HOST_LITTLE_ENDIAN) buf.writeUInt32LE(value, offset);
  else buf.writeUInt32BE(value, offset);
}

export function writeHostU64(buf: Buffer, offset: number, value: bigint): void {
  if (HOST_LITTLE_ENDIAN) buf.writeBigUInt64LE(value, offset);
  else buf.writeBigUInt64BE(value, offset);
}
