// The kvstore flags the agent and the operator share, checked into KvOptions. Pure apart from
// reading the TLS files it is given.
import fs from 'node:fs';
import type { KvOptions } from './kv.ts';
import { validClusterName } from './layout.ts';

export interface KvstoreFlags {
  clusterName?: string;
  kvstore?: string;
  kvstoreEndpoints?: string;
  kvstoreCa?: string;
  kvstoreCert?: string;
  kvstoreKey?: string;
}

export class KvstoreConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KvstoreConfigError';
  }
}

/** "http://a:2379,https://b:2379" -> checked URLs. */
export function parseEndpoints(text: string): string[] {
  const out = text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (!out.length) throw new KvstoreConfigError('--kvstore-endpoints names no URL');
  for (const e of out) {
    let u: URL;
    try {
      u = new URL(e);
    } catch {
      throw new KvstoreConfigError(`--kvstore-endpoints: "${e}" is not a URL (e.g. http://10.0.0.1:2379)`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:')
      throw new KvstoreConfigError(`--kvstore-endpoints: "${e}" must be http:// or https://`);
    if (!u.port) throw new KvstoreConfigError(`--kvstore-endpoints: "${e}" needs a port (etcd serves clients on 2379)`);
  }
  return out;
}

/** undefined: no cluster mode (no --kvstore). */
export function kvstoreOptions(
  f: KvstoreFlags,
  readFile: (p: string) => Buffer = (p) => fs.readFileSync(p),
): { cluster: string; kv: KvOptions } | undefined {
  if (!f.kvstore) {
    if (f.kvstoreEndpoints) throw new KvstoreConfigError('--kvstore-endpoints needs --kvstore etcd');
    return undefined;
  }
  if (f.kvstore !== 'etcd') throw new KvstoreConfigError(`--kvstore "${f.kvstore}" is not supported (etcd is)`);
  if (!f.kvstoreEndpoints) throw new KvstoreConfigError('--kvstore etcd needs --kvstore-endpoints URL[,URL...]');
  const cluster = f.clusterName ?? 'default';
  if (!validClusterName(cluster))
    throw new KvstoreConfigError(
      `--cluster-name "${cluster}" must be 1-32 of a-z 0-9 - (starting and ending with a letter or digit)`,
    );
  const endpoints = parseEndpoints(f.kvstoreEndpoints);
  const read = (flag: string, p?: string) => {
    if (!p) return undefined;
    try {
      return readFile(p);
    } catch (e) {
      throw new KvstoreConfigError(`${flag} ${p}: ${(e as Error).message}`);
    }
  };
  const ca = read('--kvstore-ca', f.kvstoreCa);
  const cert = read('--kvstore-cert', f.kvstoreCert);
  const key = read('--kvstore-key', f.kvstoreKey);
  if ((cert && !key) || (key && !cert)) throw new KvstoreConfigError('--kvstore-cert and --kvstore-key go together');
  if ((cert || key) && !ca) throw new KvstoreConfigError('--kvstore-cert/--kvstore-key need --kvstore-ca');
  if (endpoints.some((e) => e.startsWith('https:')) && !ca) throw new KvstoreConfigError('https:// endpoints need --kvstore-ca');
  return { cluster, kv: { endpoints, ...(ca ? { tls: { ca, cert, key } } : {}) } };
}
