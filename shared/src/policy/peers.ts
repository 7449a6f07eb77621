// What a rule's peers stand for: the identities (endpoint, reserved, CIDR, FQDN) of one universe.
// Endpoint selectors are memoized per universe of endpoint identities (a derived compiler over the same
// identities takes them over). Pure.
import { ANY_IDENTITY, RESERVED } from '../identity/reserved.ts';
import { selectorKey as fqdnKey } from '../fqdn/selector.ts';
import { isEmptySelector, matches, selectorKey, type Selector } from './selector.ts';
import type { Universe } from './compile.ts';
import type { Peer } from './types.ts';

export class PeerResolver {
  constructor(
    private readonly universe: Universe,
    private readonly selectorCache = new Map<string, number[]>(),
  ) {}

  /** A resolver for another universe with the same endpoint identities (the CIDR and FQDN ones may
   *  differ): endpoint selectors keep their answers. */
  withIdentities(universe: Universe): PeerResolver {
    return new PeerResolver(universe, new Map(this.selectorCache));
  }

  /** Identities a rule's peers stand for; [ANY_IDENTITY] when one of them is "all". */
  identities(peers: Peer[]): number[] {
    const out = new Set<number>();
    for (const p of peers) {
      if (p.kind === 'entity' && p.entity === 'all') return [ANY_IDENTITY];
      for (const id of this.resolvePeer(p)) out.add(id);
    }
    return [...out];
  }

  private resolvePeer(p: Peer): number[] {
    switch (p.kind) {
      case 'endpoints':
        return this.selectEndpoints(p.selector);
      case 'cidr': {
        const fqdn = this.universe.fqdn?.within(p.cidr, p.except) ?? [];
        const ids = this.universe.cidrs.within(p.cidr, p.except);
        return fqdn.length ? [...ids, ...fqdn] : ids;
      }
      case 'fqdn':
        return this.universe.fqdn?.select(fqdnKey(p.selector)) ?? [];
      case 'entity':
        switch (p.entity) {
          case 'host':
            return [RESERVED.host];
          case 'remote-node':
            return [RESERVED['remote-node']];
          case 'world':
            return [RESERVED.world, ...this.universe.cidrs.entries().map((e) => e.id), ...(this.universe.fqdn?.all() ?? [])];
          case 'init':
            return [RESERVED.init];
          case 'health':
            return [RESERVED.health];
          case 'unmanaged':
            return [RESERVED.unmanaged];
          case 'cluster':
            return [
              RESERVED.host,
              RESERVED['remote-node'],
              RESERVED.init,
              RESERVED.health,
              ...this.universe.identities.map((i) => i.id),
            ];
          case 'all':
            return [ANY_IDENTITY];
        }
    }
  }

  /** Endpoint identities a selector matches. Reserved identities only when it names a reserved label. */
  private selectEndpoints(s: Selector): number[] {
    const key = selectorKey(s);
    const cached = this.selectorCache.get(key);
    if (cached) return cached;
    const namesReserved = [...Object.keys(s.matchLabels), ...s.matchExpressions.map((r) => r.key)].some((k) =>
      k.startsWith('reserved:'),
    );
    const candidates = [...this.universe.identities];
    if (namesReserved) {
      for (const [name, id] of Object.entries(RESERVED)) candidates.push({ id, labels: { [`reserved:${name}`]: '' } });
    }
    const ids = isEmptySelector(s)
      ? candidates.map((c) => c.id)
      : candidates.filter((c) => matches(s, c.labels)).map((c) => c.id);
    const out = [...new Set(ids)];
    this.selectorCache.set(key, out);
    return out;
  }
}
