// Encoders for the policy map and ipcache entries (layouts in bpf/lib/policy.h and bpf/lib/maps.h,
// guarded there by _Static_assert). Host byte order except dport (network order). Pure.
import { encodeIpcacheKey } from '../maps/codec.ts';
import { formatIp, readHostU32, readHostU64, writeHostU32 } from '../net/index.ts';
import type { Direction } from './types.ts';
import type { Entry } from './compile.ts';

export const POLICY_KEY_SIZE = 12;
export const POLICY_VALUE_SIZE = 24;
export const IPCACHE_VALUE_SIZE = 8;
export const DIR_INGRESS = 0;
export const DIR_EGRESS = 1;
export const ACTION_ALLOW = 0;
export const ACTION_DENY = 1;

/** Policy-owned bits of endpoint_config.flags (bpf/lib/policy.h EP_F_*). */
export const EP_FLAGS = {
  ingressLookup: 1 << 0,
  egressLookup: 1 << 1,
  ingressDefaultDeny: 1 << 2,
  egressDefaultDeny: 1 << 3,
  audit: 1 << 4,
} as const;
export const EP_POLICY_MASK = 0x1f;

function u32(buf: Buffer, off: number, v: number): void {
  writeHostU32(buf, off, v >>> 0);
}
const r32 = readHostU32;

export interface PolicyKey {
  endpointId: number;
  peer: number;
  direction: Direction;
  proto: number;
  dport: number;
}

export function encodePolicyKey(k: PolicyKey): Buffer {
  const b = Buffer.alloc(POLICY_KEY_SIZE);
  u32(b, 0, k.endpointId);
  u32(b, 4, k.peer);
  b[8] = k.direction === 'egress' ? DIR_EGRESS : DIR_INGRESS;
  b[9] = k.proto;
  b.writeUInt16BE(k.dport, 10);
  return b;
}

export function decodePolicyKey(b: Buffer): PolicyKey {
  return {
    endpointId: r32(b, 0),
    peer: r32(b, 4),
    direction: b[8] === DIR_EGRESS ? 'egress' : 'ingress',
    proto: b[9],
    dport: b.readUInt16BE(10),
  };
}

/** Counters start at zero; they are the datapath's to update. An allow entry with a proxy port
 *  sends the flow to the L7 proxy listening there (proxy_port, network order, bytes 2-3). */
export function encodePolicyValue(e: Entry): Buffer {
  const b = Buffer.alloc(POLICY_VALUE_SIZE);
  b[0] = e.action === 'deny' ? ACTION_DENY : ACTION_ALLOW;
  if (e.action === 'allow' && e.proxyPort) b.writeUInt16BE(e.proxyPort, 2);
  u32(b, 4, e.ruleId);
  return b;
}

export function decodePolicyValue(b: Buffer): Entry & { packets: bigint; bytes: bigint } {
  const proxyPort = b.readUInt16BE(2);
  return {
    action: b[0] === ACTION_DENY ? 'deny' : 'allow',
    ruleId: r32(b, 4),
    ...(proxyPort ? { proxyPort } : {}),
    packets: readHostU64(b, 8),
    bytes: readHostU64(b, 16),
  };
}

export { encodeIpcacheKey };

export function decodeIpcacheKey(b: Buffer): string {
  const len = r32(b, 0) - 32;
  const family = b[4];
  const addr = formatIp(b.subarray(8, family === 4 ? 12 : 24));
  return `${addr}/${len}`;
}

export function encodeIpcacheValue(identity: number): Buffer {
  const b = Buffer.alloc(IPCACHE_VALUE_SIZE);
  u32(b, 0, identity);
  return b;
}

export function decodeIpcacheValue(b: Buffer): number {
  return r32(b, 0);
}
