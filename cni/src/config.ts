// The network configuration on stdin: zod schema, versions, and the few semantic checks the schema
// cannot express. zod/mini (not classic zod): classic adds ~90 ms to every plugin start.
import * as z from 'zod/mini';
import { CniCode, CniError } from './errors.ts';

export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export const LATEST_VERSION = '1.1.0';

const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

const str = z.string();
const strMap = z.record(z.string(), z.string());
const attachment = z.looseObject({ containerID: str, ifname: str });

export const NetConfSchema = z.looseObject({
  cniVersion: z.optional(str),
  name: str.check(z.regex(NAME_RE, 'must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$')),
  type: str.check(z.minLength(1)),
  /** The agent's unix socket; absolute, since DELs are queued next to it (a runtime's cwd is anyone's). */
  agentSocket: z.optional(str.check(z.regex(/^\//, 'must be an absolute path'))),
  /** The agent network (IPAM pool) endpoints join; the agent's "default" when absent. */
  network: z.optional(str.check(z.minLength(1))),
  mtu: z.optional(z.int().check(z.gte(68), z.lte(65535))),
  /** Accepted and ignored: DELs are queued next to agentSocket (<agentSocket>.pending-deletes). */
  stateDir: z.optional(str.check(z.minLength(1))),
  logFile: z.optional(str),
  logLevel: z.optional(z.enum(['debug', 'info', 'warn', 'error'])),
  /** Agent call deadlines; DEL falls back to the durable queue when its deadline passes. */
  addTimeoutMs: z.optional(z.int().check(z.gte(100))),
  delTimeoutMs: z.optional(z.int().check(z.gte(100))),
  /** Static endpoint labels for every attachment of this network. */
  labels: z.optional(strMap),
  ipMasq: z.optional(z.boolean()),
  ipam: z.optional(z.looseObject({ type: z.optional(str) })),
  dns: z.optional(
    z.looseObject({
      nameservers: z.optional(z.array(str)),
      domain: z.optional(str),
      search: z.optional(z.array(str)),
      options: z.optional(z.array(str)),
    }),
  ),
  runtimeConfig: z.optional(z.record(z.string(), z.unknown())),
  args: z.optional(z.record(z.string(), z.unknown())),
  prevResult: z.optional(z.record(z.string(), z.unknown())),
  'cni.dev/valid-attachments': z.optional(z.array(attachment)),
  'cni.dev/attachments': z.optional(z.array(attachment)),
});

export type NetConf = z.infer<typeof NetConfSchema>;

export function isSupportedVersion(v: string | undefined): boolean {
  return (SUPPORTED_VERSIONS as readonly string[]).includes(v ?? '');
}

/** Semver-ish compare of "x.y.z" strings. */
export function cmpVersion(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** Parses stdin bytes into a validated NetConf. Throws CniError 6 (decode), 1 (version), 7 (invalid). */
export function parseNetConf(raw: Buffer | string): NetConf {
  let json: unknown;
  try {
    json = JSON.parse(raw.toString());
  } catch (e) {
    throw new CniError(CniCode.DECODE, 'cannot decode the network configuration on stdin as JSON', (e as Error).message);
  }
  if (!json || typeof json !== 'object' || Array.isArray(json)) {
    throw new CniError(CniCode.DECODE, 'the network configuration on stdin is not a JSON object');
  }
  const version = (json as { cniVersion?: unknown }).cniVersion;
  if (typeof version !== 'string' || !isSupportedVersion(version)) {
    throw new CniError(
      CniCode.INCOMPATIBLE_VERSION,
      'incompatible CNI versions',
      `config is ${JSON.stringify(version ?? '0.1.0')}, plugin supports ${JSON.stringify(SUPPORTED_VERSIONS)}`,
    );
  }
  const parsed = NetConfSchema.safeParse(json);
  if (!parsed.success) {
    throw new CniError(
      CniCode.INVALID_CONFIG,
      `invalid network configuration "${String((json as { name?: unknown }).name ?? '?')}"`,
      describeIssues(parsed.error.issues),
    );
  }
  const conf = parsed.data;
  if (conf.ipMasq === true) {
    throw new CniError(
      CniCode.UNSUPPORTED_FIELD,
      'unsupported field in network configuration: ipMasq=true',
      'membrane-cni routes pod traffic without masquerading; remove ipMasq or set it to false',
    );
  }
  return conf;
}

/** The verb's minimum config version (skel's rules): CHECK >= 0.4.0, GC and STATUS >= 1.1.0. */
export function requireVersionFor(verb: string, version: string): void {
  const min = verb === 'CHECK' ? '0.4.0' : verb === 'GC' || verb === 'STATUS' ? '1.1.0' : undefined;
  if (min && cmpVersion(version, min) < 0) {
    throw new CniError(
      CniCode.INCOMPATIBLE_VERSION,
      `config version does not allow ${verb}`,
      `config is "${version}", ${verb} needs ${min} or newer`,
    );
  }
}

type Issue = {
  path: readonly PropertyKey[];
  message: string;
  code?: string;
  expected?: string;
  minimum?: unknown;
  maximum?: unknown;
  values?: unknown[];
};

/** zod/mini carries no locale: say what was expected ourselves, naming the key. */
export function describeIssues(issues: readonly Issue[]): string {
  return issues
    .slice(0, 5)
    .map((i) => {
      const where = i.path.length ? i.path.map(String).join('.') : '(root)';
      let what = i.message;
      if (i.code === 'invalid_type') what = `expected ${i.expected}`;
      else if (i.code === 'too_small') what = `must be at least ${String(i.minimum)}`;
      else if (i.code === 'too_big') what = `must be at most ${String(i.maximum)}`;
      else if (i.code === 'invalid_value') what = `must be one of ${JSON.stringify(i.values)}`;
      return `${where}: ${what}`;
    })
    .join('; ');
}
