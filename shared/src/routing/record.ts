// Which cluster routing an agent set up on its node, kept in its state dir. Routes, the tunnel device
// and from_underlay outlive the agent on purpose (pods keep reaching other nodes); an agent restarted
// on the same state dir without cluster mode would otherwise leave them behind until a purge, still
// steering traffic to nodes it no longer follows. The record says what to look for; teardown.ts
// removes only what is provably ours.
import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomicSync } from '../io/atomic-write.ts';
import type { Netlink } from '../netlink/index.ts';
import { removeClusterRouting } from './teardown.ts';

const RECORD_FILE = 'cluster-routing.json';

export interface ClusterRoutingRecord {
  tunnelDevice: string;
  nodeIp: string;
}

/** Written before cluster routing touches the kernel, so a crash mid-start is covered too. */
export function rememberClusterRouting(stateDir: string, r: ClusterRoutingRecord): void {
  writeFileAtomicSync(path.join(stateDir, RECORD_FILE), JSON.stringify(r));
}

function recalled(stateDir: string): ClusterRoutingRecord | undefined {
  try {
    const r = JSON.parse(fs.readFileSync(path.join(stateDir, RECORD_FILE), 'utf8')) as Partial<ClusterRoutingRecord>;
    return typeof r.tunnelDevice === 'string' && typeof r.nodeIp === 'string'
      ? { tunnelDevice: r.tunnelDevice, nodeIp: r.nodeIp }
      : undefined;
  } catch {
    return undefined; // never in cluster mode (or purged)
  }
}

/** For an agent starting in single-node mode: removes what an earlier cluster-mode agent on this state
 *  dir left (one line per removed thing), then the record. Run before the datapath re-pins programs:
 *  from_underlay is recognised by its pin. */
export function removeLeftClusterRouting(host: Netlink, stateDir: string, pinDir: string): string[] {
  const r = recalled(stateDir);
  if (!r) return [];
  const removed = removeClusterRouting(host, { pinDir, tunnelDevice: r.tunnelDevice, nodeIp: r.nodeIp });
  fs.rmSync(path.join(stateDir, RECORD_FILE), { force: true });
  return removed;
}
