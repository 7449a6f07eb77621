// Request bodies of the agent API. Every body is checked here before any work starts.
import { z } from 'zod';

const labels = z.record(z.string().max(253), z.string().max(1024));

/** A name that is part of the API's URLs (/v1/endpoints/<containerId>/…): text a URL can carry, so
 *  that what was created can be named again to be read or deleted. No control characters and no
 *  lone UTF-16 surrogates (JSON's "\ud800" escape), which encodeURIComponent cannot encode. */
const urlName = (max: number) =>
  z
    .string()
    .min(1)
    .max(max)
    .refine((s) => !/[\u0000-\u001f\u007f]|\p{Cs}/u.test(s), {
      message: 'must not contain control characters or unpaired surrogates',
    });

export const EndpointRequestSchema = z
  .object({
    containerId: urlName(256),
    netns: z.string().min(1).max(4096).optional(),
    ifName: z.string().min(1).max(15),
    network: urlName(63).optional(),
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
    name: urlName(63),
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
