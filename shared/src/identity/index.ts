// Security identities: labels, the numeric space, allocation, CIDR identities, ipcache content.
export * from './labels.ts';
export * from './reserved.ts';
export { IdentityAllocator, type IdentityView } from './allocator.ts';
export { CidrIdentities, normalizeCidr } from './cidr.ts';
export { desiredIpcache, diffMaps, type MapDiff } from './ipcache.ts';
