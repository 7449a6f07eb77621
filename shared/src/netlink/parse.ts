// Kernel constants of the netlink module (address families, route scopes). Address, MAC and interface
// name text lives in shared/src/net. No native code here.
import type { Family } from '../net/index.ts';

export const AF_INET = 2;
export const AF_INET6 = 10;

export function afOf(family: Family): number {
  return family === 4 ? AF_INET : AF_INET6;
}

export const RT_SCOPE = { universe: 0, site: 200, link: 253, host: 254, nowhere: 255 } as const;
export type ScopeName = keyof typeof RT_SCOPE;

export function scopeName(n: number): ScopeName | string {
  for (const [k, v] of Object.entries(RT_SCOPE)) if (v === n) return k;
  return String(n);
}
