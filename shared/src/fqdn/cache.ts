// The name cache: what DNS answers through the proxy taught, one entry per (name, address), shared by
// every endpoint that looked the name up (each endpoint's own expiry is kept for `fqdn cache list`).
// An entry lives for max(TTL, minimum TTL) after the last answer that carried it; the caller removes
// expired entries only once no connection uses their address (state.ts). A name keeps at most
// MAX_IPS_PER_NAME addresses (the ones expiring first go), so a name that answers with ever new
// addresses cannot grow it without bound. Pure.

export interface NameEntry {
  /** Canonical name ("api.example.com."). */
  name: string;
  ip: string;
  /** TTL of the last answer, seconds. */
  ttl: number;
  /** ms since the epoch. */
  seenAt: number;
  expiresAt: number;
  /** endpoint id -> its expiry (ms). */
  endpoints: Map<number, number>;
}

export const MAX_IPS_PER_NAME = 100;

/** Serialized form: [name, ip, ttl, seenAt, expiresAt, [[endpoint, expiresAt], ...]]. */
export type EntryTuple = [string, string, number, number, number, [number, number][]];

export class NameCache {
  private readonly byName = new Map<string, Map<string, NameEntry>>();
  private readonly byIp = new Map<string, Set<string>>();

  /** `ips`: address and TTL (seconds). Returns the addresses whose set of names changed. */
  learn(endpoint: number, names: string[], ips: { ip: string; ttl: number }[], now: number, minTtl: number): string[] {
    const changed = new Set<string>();
    for (const name of names) {
      let entries = this.byName.get(name);
      if (!entries) this.byName.set(name, (entries = new Map()));
      for (const { ip, ttl } of ips) {
        const expiresAt = now + Math.max(ttl, minTtl) * 1000;
        let e = entries.get(ip);
        if (!e) {
          entries.set(ip, (e = { name, ip, ttl, seenAt: now, expiresAt, endpoints: new Map() }));
          let names = this.byIp.get(ip);
          if (!names) this.byIp.set(ip, (names = new Set()));
          names.add(name);
          changed.add(ip);
        }
        e.ttl = ttl;
        e.seenAt = now;
        e.expiresAt = Math.max(e.expiresAt, expiresAt);
        e.endpoints.set(endpoint, Math.max(e.endpoints.get(endpoint) ?? 0, expiresAt));
      }
      if (entries.size > MAX_IPS_PER_NAME) {
        const drop = [...entries.values()].sort((a, b) => a.expiresAt - b.expiresAt).slice(0, entries.size - MAX_IPS_PER_NAME);
        for (const d of drop) if (this.remove(d.name, d.ip)) changed.add(d.ip);
      }
    }
    return [...changed];
  }

  /** Restores a persisted entry as it was. */
  restore(t: EntryTuple): void {
    const [name, ip, ttl, seenAt, expiresAt, eps] = t;
    let entries = this.byName.get(name);
    if (!entries) this.byName.set(name, (entries = new Map()));
    entries.set(ip, { name, ip, ttl, seenAt, expiresAt, endpoints: new Map(eps) });
    let names = this.byIp.get(ip);
    if (!names) this.byIp.set(ip, (names = new Set()));
    names.add(name);
  }

  /** true when the address lost a name. */
  remove(name: string, ip: string): boolean {
    const entries = this.byName.get(name);
    if (!entries?.delete(ip)) return false;
    if (!entries.size) this.byName.delete(name);
    const names = this.byIp.get(ip);
    names?.delete(name);
    if (names && !names.size) this.byIp.delete(ip);
    return true;
  }

  namesOf(ip: string): string[] {
    return [...(this.byIp.get(ip) ?? [])];
  }

  ipsOf(name: string): NameEntry[] {
    return [...(this.byName.get(name)?.values() ?? [])];
  }

  ips(): string[] {
    return [...this.byIp.keys()];
  }

  /** Entries past their expiry. */
  expired(now: number): NameEntry[] {
    const out: NameEntry[] = [];
    for (const entries of this.byName.values()) for (const e of entries.values()) if (e.expiresAt <= now) out.push(e);
    return out;
  }

  /** An endpoint went away: it no longer uses any entry (the entries live on until they expire). */
  forgetEndpoint(endpoint: number): void {
    for (const entries of this.byName.values()) for (const e of entries.values()) e.endpoints.delete(endpoint);
  }

  entries(): NameEntry[] {
    const out: NameEntry[] = [];
    for (const entries of this.byName.values()) out.push(...entries.values());
    return out;
  }

  get size(): { names: number; addresses: number; entries: number } {
    let entries = 0;
    for (const m of this.byName.values()) entries += m.size;
    return { names: this.byName.size, addresses: this.byIp.size, entries };
  }

  dump(): EntryTuple[] {
    return this.entries().map((e) => [e.name, e.ip, e.ttl, e.seenAt, e.expiresAt, [...e.endpoints]]);
  }
}
