// Numeric identity space, shaped like Cilium's so operators recognise the numbers. Pure.
//   1..255        reserved (host=1, world=2, unmanaged=3, health=4, init=5, remote-node=6: another node of the cluster)
//   256..2^24-1   label identities (one per distinct identity-relevant label set)
//   2^24..        CIDR identities (one per prefix named by a policy; Cilium's "local" scope)
//   0xff000000..  FQDN identities (one per set of toFQDNs selectors and policy prefixes an address
//                 learned from DNS falls in; fqdn/identities.ts), also node-local
// 0 is never an identity: in the policy map it means "any peer".
import type { Labels } from './labels.ts';

export const RESERVED = { host: 1, world: 2, unmanaged: 3, health: 4, init: 5, 'remote-node': 6 } as const;
export type ReservedName = keyof typeof RESERVED;

export const ANY_IDENTITY = 0;
export const FIRST_LABEL_IDENTITY = 256;
export const LAST_LABEL_IDENTITY = (1 << 24) - 1;
export const FIRST_CIDR_IDENTITY = 1 << 24;
export const FIRST_FQDN_IDENTITY = 0xff00_0000;
export const LAST_FQDN_IDENTITY = 2 ** 32 - 1;
export const LAST_CIDR_IDENTITY = FIRST_FQDN_IDENTITY - 1;

export type IdentityKind = 'reserved' | 'endpoint' | 'cidr' | 'fqdn';

export function identityKind(id: number): IdentityKind {
  if (id >= FIRST_FQDN_IDENTITY) return 'fqdn';
  if (id >= FIRST_CIDR_IDENTITY) return 'cidr';
  if (id >= FIRST_LABEL_IDENTITY) return 'endpoint';
  return 'reserved';
}

export function reservedLabels(name: ReservedName): Labels {
  return { [`reserved:${name}`]: '' };
}

export function reservedName(id: number): ReservedName | undefined {
  return (Object.keys(RESERVED) as ReservedName[]).find((n) => RESERVED[n] === id);
}
