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
import { openNetlink } from '../netlink/index.ts';
import { underlayOf } from '../routing/device.ts';
import path from 'node:path';

/** Checks the cluster flags (ConfigError names the flag); undefined when not in cluster mode. */
export function clusterSettings(
  cfg: AgentConfig,
): (NonNullable<ReturnType<typeof kvstoreOptions>> & { nodeIp: string }) | undefined {
  if (!cfg.cluster) return undefined;
  let opts;
  try {
    opts = kvstoreOptions(cfg.cluster);
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
  if (!opts) return undefined;
  const nodeIp = cfg.cluster.nodeIp;
  if (!nodeIp) throw new ConfigError('cluster mode needs --node-ip ADDR (the address other nodes reach this node at)');
  if (!familyOf(nodeIp)) throw new ConfigError(`--node-ip "${nodeIp}" is not an IP address`);
  return { ...opts, nodeIp };
}

export async function connectCluster(cfg: AgentConfig, log: Logger): Promise<ClusterMode | undefined> {
  const s = clusterSettings(cfg);
  if (!s) return undefined;
  const flags = cfg.cluster!;
  // The interface holding --node-ip: the tunnel's MTU is its MTU minus the VXLAN overhead.
  const nl = openNetlink();
  let underlay;
  try {
    underlay = underlayOf(nl, s.nodeIp);
  } catch (e) {
    throw new ConfigError((e as Error).message);
  } finally {
    nl.close();
  }
  const { ClusterMode } = await import('../cluster/mode.ts');
  const mode = await ClusterMode.connect(
    {
      cluster: s.cluster,
      kv: s.kv,
      nodeName: cfg.nodeName,
      nodeIp: s.nodeIp,
      stateDir: cfg.stateDir,
      leaseTtlSeconds: flags.leaseTtlSeconds,
      maxStaleMs: flags.maxStaleSeconds * 1000,
      startTimeoutMs: 60_000,
      allocateTimeoutMs: 10_000,
      routing: { mode: flags.routingMode, tunnelDevice: flags.tunnelDevice, tunnelPort: flags.tunnelPort, underlay },
      observer: advertisedObserver(cfg, s.nodeIp),
    },
    log.child({ component: 'cluster' }),
  );
  log.info(
    {
      cluster: s.cluster,
      endpoints: s.kv.endpoints,
      node: cfg.nodeName,
      nodeIp: s.nodeIp,
      routing: flags.routingMode,
      ...mode.status().podCidrs,
    },
    'cluster mode: node registered',
  );
  return mode;
}

/** Where the relay reaches this node's observer: its TCP listener at the node's address (a wildcard
 *  host is the node IP; port 0 cannot be advertised), else its unix socket on this machine. */
export function advertisedObserver(
  cfg: Pick<AgentConfig, 'observerAddress' | 'observerSocket' | 'observerTls'>,
  nodeIp: string,
): { address: string; tls: boolean } {
  const m = cfg.observerAddress ? /^\[?([^\]]*?)\]?:(\d+)$/.exec(cfg.observerAddress) : null;
  if (m && m[2] !== '0') {
    const host = !m[1] || m[1] === '0.0.0.0' || m[1] === '::' ? nodeIp : m[1];
    return { address: host.includes(':') ? `[${host}]:${m[2]}` : `${host}:${m[2]}`, tls: !!cfg.observerTls };
  }
  return { address: `unix://${path.resolve(cfg.observerSocket)}`, tls: false };
}
