// shared/src/net: addresses, prefixes, MACs, interface names and host byte order, in one place.
// Pure and cheap to import (Node built-ins only): the CNI executable and the BPF map codecs use it.
export * from './ip.ts';
export * from './cidr.ts';
export * from './mac.ts';
export * from './ifname.ts';
export * from './byteorder.ts';
