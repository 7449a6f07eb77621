// Everything an agent leaves on its node, as one comparable object: endpoints, held addresses, links
// and routes in the node's netns, datapath map entries, and the store's records. Tests compare it
// before and after an attack, a fuzz run or a soak: equal means nothing was leaked.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestAgent } from './agent.ts';
import { mapEntries } from './inspect.ts';
import { JournalStore } from '../../shared/src/store/journal.ts';
import { TCX_LINK_PIN } from '../../shared/src/bpf/layout.ts';

export interface NodeState {
  endpoints: string[];
  addresses: string[];
  /** Host veths (mbr + 11 hex) and their routes in the agent's netns. */
  links: string[];
  routes: string[];
  maps: Record<string, number>;
  /** The tcx link pins in the agent's bpffs dir (shared/src/bpf/tcx.ts): one per attached hook, so a
   *  pin of a device that went is a leak (the kernel detached its link; the pin keeps it allocated). */
  tcxPins: string[];
  /** Store records by kind: endpoints, IPAM allocations (pool and external). */
  records: Record<string, number>;
}

function inNetns(agent: TestAgent, cmd: string[]): string {
  const argv = agent.netnsPath ? ['nsenter', `--net=${agent.netnsPath}`, ...cmd] : cmd;
  return execFileSync(argv[0], argv.slice(1), { encoding: 'utf8' });
}

/** The store's keys, read from a copy of the state dir (the agent keeps writing the original). */
export async function storeKeys(stateDir: string): Promise<string[]> {
  const copy = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-storecopy-'));
  try {
    for (const f of ['snapshot.json', 'journal.log']) {
      try {
        fs.copyFileSync(path.join(stateDir, 'store', f), path.join(copy, f));
      } catch {
        /* not there yet */
      }
    }
    const s = new JournalStore(copy);
    const keys: string[] = [];
    for (const p of ['endpoints', 'ipam', 'ipam-external']) {
      for (const { key } of await s.list(p)) keys.push(key);
    }
    s.close();
    return keys.sort();
  } finally {
    fs.rmSync(copy, { recursive: true, force: true });
  }
}

export async function nodeState(agent: TestAgent): Promise<NodeState> {
  const eps = await agent.client.listEndpoints();
  const ipam = await agent.client.request<{
    pools: { allocations: { ip: string; owner: string }[] }[];
    external?: { ip: string; owner: string }[];
  }>('GET', '/v1/ipam');
  const keys = await storeKeys(agent.stateDir);
  const links = inNetns(agent, ['ip', '-o', 'link', 'show'])
    .split('\n')
    .map((l) => /^\d+: (mbr[0-9a-f]{11})[@:]/.exec(l)?.[1])
    .filter((x): x is string => !!x)
    .sort();
  const routes = [
    ...inNetns(agent, ['ip', '-4', 'route', 'show']).split('\n'),
    ...inNetns(agent, ['ip', '-6', 'route', 'show']).split('\n'),
  ]
    .filter((l) => / dev mbr[0-9a-f]{11}/.test(l))
    .map((l) => l.trim())
    .sort();
  return {
    endpoints: eps.map((e) => `${e.docker?.endpointId ?? e.containerId}/${e.ifName}`).sort(),
    addresses: [...ipam.pools.flatMap((p) => p.allocations), ...(ipam.external ?? [])].map((a) => `${a.ip} ${a.owner}`).sort(),
    links,
    routes,
    // ep_counters is an array by endpoint id (every slot always exists, zeroed when an id is given
    // out): nothing there can leak that an endpoints_cfg entry would not show.
    maps: Object.fromEntries(['endpoints_cfg', 'local_endpoints'].map((m) => [m, mapEntries(agent.bpffsDir, m)])),
    tcxPins: fs
      .readdirSync(agent.bpffsDir)
      .filter((n) => TCX_LINK_PIN.test(n))
      .sort(),
    records: {
      endpoints: keys.filter((k) => k.startsWith('endpoints/')).length,
      addresses: keys.filter((k) => k.startsWith('ipam/') || k.startsWith('ipam-external/')).length,
    },
  };
}
