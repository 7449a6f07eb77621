// Cluster mode as the agent's composition root sees it: the flags checked, and the connection made
// before the agent opens its networks (the default network takes the node's pod CIDRs). The rest
// (publishing endpoints, mirroring other nodes', /v1/cluster) is ClusterMode's. Everything
// cluster-specific is imported lazily: an agent without --kvstore never loads the etcd client.
import type { AgentConfig } from './config.ts';
import { ConfigError } from './config.ts';
import type { Logger } from '../log.ts';
import { kvstoreOptions } from '../kvstore/config.ts';
import { familyOf } from '../net/index.ts';
import type { ClusterMode } from '../cluster/mode.ts';

/** Checks the cluster flags (ConfigError names the flag); undefined when not in cluster mode. */
export function clusterSettings(cfg: AgentConfig): (NonNullable<ReturnType<typeof kvstoreOptions>> & { nodeIp: string }) | undefined {
  if (!cfg.cluster) return undefined;
  let opts;
  try { opts = kvstoreOptions(cfg.cluster); } catch (e) { throw new ConfigError((e as Error).message); }
  if (!opts) return undefined;
  const nodeIp = cfg.cluster.nodeIp;
  if (!nodeIp) throw new ConfigError('cluster mode needs --node-ip ADDR (the address other nodes reach this node at)');
  if (!familyOf(nodeIp)) throw new ConfigError(`--node-ip "${nodeIp}" is not an IP address`);
  return { ...opts, nodeIp };
}

export async function connectCluster(cfg: AgentConfig, log: Logger): Promise<ClusterMode | undefined> {
  const s = clusterSettings(cfg);
  if (!s) return undefined;
  const { ClusterMode } = await import('../cluster/mode.ts');
  const mode = await ClusterMode.connect({
    cluster: s.cluster, kv: s.kv, nodeName: cfg.nodeName, nodeIp: s.nodeIp, stateDir: cfg.stateDir,
    leaseTtlSeconds: cfg.cluster!.leaseTtlSeconds, startTimeoutMs: 60_000, allocateTimeoutMs: 10_000,
  }, log.child({ component: 'cluster' }));
  log.info({ cluster: s.cluster, endpoints: s.kv.endpoints, node: cfg.nodeName, nodeIp: s.nodeIp, ...mode.status().podCidrs }, 'cluster mode: node registered');
  return mode;
}
