// MAC addresses: parse, print, canonical text, random. Pure (randomMac uses Web Crypto, no import).
import { AddressError } from './ip.ts';

/** "02:42:ac:11:00:02" (or with '-', one or two hex digits per group) -> 6 bytes. */
export function parseMac(text: string): Buffer {
  const parts = text.trim().split(/[:-]/);
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{1,2}$/.test(p))) {
    throw new AddressError(`"${text}" is not a MAC address (expected aa:bb:cc:dd:ee:ff)`);
  }
  return Buffer.from(parts.map((p) => parseInt(p, 16)));
}

export function formatMac(bytes: Uint8Array): string {
  if (bytes.length !== 6) throw new AddressError(`a MAC address has 6 bytes, got ${bytes.length}`);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(':');
}

/** Canonical text: lowercase, ':'-separated, two digits per group. */
export function normalizeMac(text: string): string {
  return formatMac(parseMac(text));
}

/** Group bit set: not usable as an interface address. */
export function isMulticastMac(mac: Uint8Array | string): boolean {
  const first = typeof mac === 'string' ? parseMac(mac)[0] : mac[0];
  return (first & 1) === 1;
}

/** A canonical unicast MAC for an interface; throws AddressError naming the problem otherwise. */
export function interfaceMac(text: string): string {
  const bytes = parseMac(text);
  if (isMulticastMac(bytes)) throw new AddressError(`MAC ${text} is a multicast address`);
  return formatMac(bytes);
}

/** Random unicast, locally administered MAC. */
export function randomMac(): string {
  const b = globalThis.crypto.getRandomValues(new Uint8Array(6));
  b[0] = (b[0] & 0xfe) | 0x02;
  return formatMac(b);
}
