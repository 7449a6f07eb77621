// Request bodies of the agent API. Every body is checked here before any work starts.
import { z } from 'zod';

const labels = z.record(z.string().max(253), z.string().max(1024));

export const EndpointRequestSchema = z
  .object({
    containerId: z.string().min(1).max(256),
    netns: z.string().min(1).max(4096).optional(),
    ifName: z.string().min(1).max(15),
    network: z.string().min(1).max(63).optional(),
    labels: labels.optional(),
    metadata: labels.optional(),
    mac: z.string().optional(),
    mtu: z.number().int().optional(),
    ips: z.array(z.string()).max(2).optional(),
    externalIpam: z.boolean().optional(),
  })
  .strict();

export const NetworkSpecSchema = z
  .object({
    name: z.string().min(1).max(63),
    subnets: z.array(z.string()).min(1).max(2),
    gateways: z.array(z.string()).max(2).optional(),
    mtu: z.number().int().optional(),
    options: z.record(z.string(), z.string()).optional(),
  })
  .strict();

export const LabelsSchema = z.object({ labels }).strict();

/** "ips.0: Invalid input" style: the field path first, so the message names what was wrong. */
export function describeZodError(err: z.ZodError): string {
  return err.issues.map((i) => `${i.path.length ? i.path.join('.') : 'body'}: ${i.message}`).join('; ');
}

/** The first field a validation error names ("body" for the body as a whole, or an unknown key). */
export function zodField(err: z.ZodError): string {
  const i = err.issues[0];
  if (i?.code === 'unrecognized_keys' && i.keys.length) return i.keys[0];
  return i?.path.length ? i.path.join('.') : 'body';
}
