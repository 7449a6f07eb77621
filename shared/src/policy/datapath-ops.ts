// PolicyDatapathOps over the pinned maps of a loaded Datapath: the policy hash, the ipcache LPM trie
// and the policy bits of endpoints_cfg. Policy map changes are batched (bpf_map_update_batch and
// delete_batch: one syscall each per change); the LPM trie has no batch op in the kernel. After a
// change, established flows are revalidated (revalidate.ts) on the next turn of the event loop: off the
// change's own latency, well within the second a denied flow may live on; a walk that fails is done
// again over every entry a second later, until one succeeds.
import type { Datapath } from '../bpf/datapath.ts';
import * as bpf from '../bpf/libbpf.ts';
import { ENDPOINT_CONFIG_SIZE, encodeU32Key } from '../maps/codec.ts';
import { readHostU32, writeHostU32 } from '../net/index.ts';
import type { MapChanges, Mirror, PolicyDatapathOps } from './apply.ts';
import { revalidateConntrack } from './revalidate.ts';
import type { Entry } from './compile.ts';
import {
  EP_POLICY_MASK,
  IPCACHE_VALUE_SIZE,
  POLICY_KEY_SIZE,
  POLICY_VALUE_SIZE,
  decodeIpcacheKey,
  decodeIpcacheValue,
  decodePolicyValue,
  encodeIpcacheKey,
  encodeIpcacheValue,
  encodePolicyValue,
} from './map-codec.ts';

/** After a failed revalidation, the delay before every flow is asked again. */
export const REVALIDATE_RETRY_MS = 1000;
const FLAGS_OFFSET = 8; // struct endpoint_config: endpoint_id, identity, flags

export interface DatapathPolicyOps extends PolicyDatapathOps {
  /** Resolves with the number of flows revoked once the revalidation a change scheduled has run. */
  revalidated(): Promise<number>;
}

export function datapathOps(dp: Datapath, opts: { log?: { warn(o: object, msg: string): void } } = {}): DatapathPolicyOps {
  const fd = (name: 'policy' | 'ipcache' | 'endpoints_cfg') => dp.mapFd(name);
  let pending: Promise<number> | undefined;
  let what: MapChanges | undefined;
  let retry: ReturnType<typeof setTimeout> | undefined;
  // A walk that failed left alive the flows the change denies (fail open, and no later change asks
  // about them again): every entry is asked (its filter is gone with it) a second later, and again
  // until a walk succeeds.
  const retryFull = (mirror: Mirror) => {
    retry ??= setTimeout(() => {
      retry = undefined;
      try {
        revalidateConntrack(dp, mirror);
      } catch (err) {
        opts.log?.warn({ err }, 'conntrack revalidation failed again; retrying');
        retryFull(mirror);
      }
    }, REVALIDATE_RETRY_MS);
    retry.unref?.();
  };

  return {
    changed(mirror: Mirror, changes: MapChanges) {
      // Several changes in one turn share one walk; it reads the mirror as it is when it runs.
      what = what
        ? {
            policyKeys: [...what.policyKeys, ...changes.policyKeys],
            flagIfindexes: [...what.flagIfindexes, ...changes.flagIfindexes],
            ipcachePrefixes: [...what.ipcachePrefixes, ...changes.ipcachePrefixes],
          }
        : changes;
      pending ??= new Promise<number>((resolve) =>
        setImmediate(() => {
          const touched = what!;
          pending = undefined;
          what = undefined;
          try {
            resolve(revalidateConntrack(dp, mirror, touched));
          } catch (err) {
            opts.log?.warn({ err }, 'conntrack revalidation failed; every flow is asked again in a second');
            retryFull(mirror);
            resolve(0);
          }
        }),
      );
    },

    revalidated: () => pending ?? Promise.resolve(0),

    policyCapacity: dp.mapCapacity('policy'),
    ipcacheCapacity: dp.mapCapacity('ipcache'),

    readPolicy() {
      const out = new Map<string, Entry>();
      const { keys, values } = bpf.mapDumpBatch(fd('policy'), 'policy', POLICY_KEY_SIZE, POLICY_VALUE_SIZE);
      keys.forEach((k, i) => {
        const { action, ruleId, proxyPort } = decodePolicyValue(values[i]);
        out.set(k.toString('hex'), { action, ruleId, ...(proxyPort ? { proxyPort } : {}) });
      });
      return out;
    },

    writePolicy(upsert, remove) {
      if (upsert.length) {
        const keys = Buffer.concat(upsert.map(([k]) => Buffer.from(k, 'hex')));
        const values = Buffer.concat(upsert.map(([, v]) => encodePolicyValue(v)));
        dp.mapUpdateBatch('policy', keys, values, upsert.length);
      }
      if (remove.length) dp.mapDeleteBatch('policy', Buffer.concat(remove.map((k) => Buffer.from(k, 'hex'))), remove.length);
    },

    readIpcache() {
      // The LPM trie has no batch lookup: walk it.
      const out = new Map<string, number>();
      for (const key of bpf.mapKeys(fd('ipcache'), 'ipcache', 24, dp.mapCapacity('ipcache') + 1)) {
        const v = bpf.mapLookup(fd('ipcache'), 'ipcache', key, IPCACHE_VALUE_SIZE);
        if (v) out.set(decodeIpcacheKey(key), decodeIpcacheValue(v));
      }
      return out;
    },
    writeIpcache(upsert, remove) {
      for (const [prefix, id] of upsert)
        bpf.mapUpdate(fd('ipcache'), 'ipcache', encodeIpcacheKey(prefix), encodeIpcacheValue(id));
      for (const prefix of remove) bpf.mapDelete(fd('ipcache'), 'ipcache', encodeIpcacheKey(prefix));
    },

    readEndpointFlags(ifindex) {
      const v = bpf.mapLookup(fd('endpoints_cfg'), 'endpoints_cfg', encodeU32Key(ifindex), ENDPOINT_CONFIG_SIZE);
      if (!v) return undefined;
      return readHostU32(v, FLAGS_OFFSET) & EP_POLICY_MASK;
    },

    writeEndpointFlags(ifindex, flags) {
      // Read-modify-write of one value; the agent is the only writer and changes are serialized.
      const key = encodeU32Key(ifindex);
      const v = bpf.mapLookup(fd('endpoints_cfg'), 'endpoints_cfg', key, ENDPOINT_CONFIG_SIZE);
      if (!v) return;
      const cur = readHostU32(v, FLAGS_OFFSET);
      const next = ((cur & ~EP_POLICY_MASK) | (flags & EP_POLICY_MASK)) >>> 0;
      writeHostU32(v, FLAGS_OFFSET, next);
      bpf.mapUpdate(fd('endpoints_cfg'), 'endpoints_cfg', key, v, 2 /* BPF_EXIST: never create a config */);
    },
  };
}
