// Request bodies of the libnetwork remote NetworkDriver and IpamDriver protocols (Go field names).
// Unknown keys are ignored (newer engines add some); what we read is checked before any work starts.
import { z } from 'zod';

const id = z.string().regex(/^[0-9a-f]{64}$/, 'expected a 64-hex Docker id');
/** The address space names a pool's stored record: bounded so that record's file name stays legal. */
const addressSpace = z.string().max(64, 'AddressSpace must be at most 64 characters').default('');
/** Generic option maps carry lists and objects as well as strings (portmap, exposedports, ...). */
const anyOptions = z
  .record(z.string(), z.unknown())
  .nullish()
  .transform((o) => o ?? {});

export const IpamDataSchema = z.object({
  AddressSpace: addressSpace,
  Pool: z.string().min(1, 'Pool must not be empty'),
  Gateway: z.string().optional().default(''),
  AuxAddresses: z
    .record(z.string(), z.string())
    .nullish()
    .transform((o) => o ?? {}),
});
export type IpamData = z.infer<typeof IpamDataSchema>;

export const CreateNetworkSchema = z.object({
  NetworkID: id,
  Options: anyOptions,
  IPv4Data: z
    .array(IpamDataSchema)
    .nullish()
    .transform((a) => a ?? []),
  IPv6Data: z
    .array(IpamDataSchema)
    .nullish()
    .transform((a) => a ?? []),
});
export type CreateNetworkRequest = z.infer<typeof CreateNetworkSchema>;

export const NetworkOnlySchema = z.object({ NetworkID: id });

export const AllocateNetworkSchema = z.object({
  NetworkID: id,
  Options: z
    .record(z.string(), z.string())
    .nullish()
    .transform((o) => o ?? {}),
});

export const EndpointOnlySchema = z.object({ NetworkID: id, EndpointID: id });

export const CreateEndpointSchema = z.object({
  NetworkID: id,
  EndpointID: id,
  Interface: z
    .object({
      Address: z.string().optional().default(''),
      AddressIPv6: z.string().optional().default(''),
      MacAddress: z.string().optional().default(''),
    })
    .nullish()
    .transform((i) => i ?? { Address: '', AddressIPv6: '', MacAddress: '' }),
  Options: anyOptions,
});
export type CreateEndpointRequest = z.infer<typeof CreateEndpointSchema>;

export const JoinSchema = z.object({
  NetworkID: id,
  EndpointID: id,
  SandboxKey: z.string().min(1, 'SandboxKey must not be empty'),
  Options: anyOptions,
});
export type JoinRequest = z.infer<typeof JoinSchema>;

export const ProgramExternalSchema = z.object({ NetworkID: id, EndpointID: id, Options: anyOptions });

export const DiscoverySchema = z.object({ DiscoveryType: z.number().int(), DiscoveryData: z.unknown() });

export const RequestPoolSchema = z.object({
  AddressSpace: addressSpace,
  Pool: z.string().default(''),
  SubPool: z.string().default(''),
  Options: z
    .record(z.string(), z.string())
    .nullish()
    .transform((o) => o ?? {}),
  V6: z.boolean().default(false),
});
export type RequestPoolRequest = z.infer<typeof RequestPoolSchema>;

export const ReleasePoolSchema = z.object({ PoolID: z.string().min(1, 'PoolID must not be empty') });

export const RequestAddressSchema = z.object({
  PoolID: z.string().min(1, 'PoolID must not be empty'),
  Address: z.string().default(''),
  Options: z
    .record(z.string(), z.string())
    .nullish()
    .transform((o) => o ?? {}),
});
export type RequestAddressRequest = z.infer<typeof RequestAddressSchema>;

export const ReleaseAddressSchema = z.object({
  PoolID: z.string().min(1, 'PoolID must not be empty'),
  Address: z.string().min(1, 'Address must not be empty'),
});

export const EmptySchema = z.object({}).passthrough();

/** "NetworkID: expected a 64-hex Docker id" style. */
export function describeZodError(err: z.ZodError): string {
  return err.issues.map((i) => `${i.path.length ? i.path.join('.') : 'body'}: ${i.message}`).join('; ');
}
