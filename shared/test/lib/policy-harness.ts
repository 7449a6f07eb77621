// The real policy engine over a bpfHarness datapath, for tests that need policies enforced by the
// program: endpoints get identities from their labels, configs in the maps and policy flags.
import t from 'tap';
import { MemoryStore } from '../../src/store/index.ts';
import { PolicyEngine } from '../../src/policy/engine.ts';
import { datapathOps, type DatapathPolicyOps } from '../../src/policy/datapath-ops.ts';
import { endpointRecord } from './endpoint-record.ts';
import type { Harness } from './bpf-harness.ts';

export interface TestEndpoint {
  id: number;
  ifindex: number;
  ip: string;
  ip6: string;
  labels: Record<string, string>;
  mac: string;
  hostMac: string;
}

/** Test endpoint number `n` of a /24 (`net`: its first three octets) and a /64 (`net6`: its prefix
 *  before `::`), with MACs derived from `n`. */
export function testEndpoint(id: number, ifindex: number, n: number, app: string, net: string, net6: string): TestEndpoint {
  const hex = n.toString(16).padStart(2, '0');
  return {
    id,
    ifindex,
    ip: `${net}.${n}`,
    ip6: `${net6}::${n}`,
    labels: { app },
    mac: `02:00:00:00:${hex}:02`,
    hostMac: `02:00:00:00:${hex}:01`,
  };
}

export interface PolicyHarness {
  engine: PolicyEngine;
  ops: DatapathPolicyOps;
  identity(e: TestEndpoint): number;
  /** Imports YAML (replacing policies of the same name); resolves once established flows are revalidated. */
  apply(yaml: string): Promise<void>;
  clear(): Promise<void>;
}

export function policyHarness(h: Harness, endpoints: TestEndpoint[], gateway6 = 'fd00::fe'): PolicyHarness {
  const ids = new Map<number, number>();
  const p = { identity: (e: TestEndpoint) => ids.get(e.id)! } as PolicyHarness;
  t.before(async () => {
    p.ops = datapathOps(h.dp);
    p.engine = await PolicyEngine.open({ store: new MemoryStore(), ops: p.ops, hostAddresses: () => [] });
    await p.engine.start();
    for (const e of endpoints) {
      const identity = await p.engine.identityFor(e.labels);
      ids.set(e.id, identity);
      const ep = endpointRecord(e.id, {
        hostIfIndex: e.ifindex,
        hostMac: e.hostMac,
        mac: e.mac,
        labels: e.labels,
        identity,
        ips: [
          { address: `${e.ip}/32`, gateway: '10.0.0.254', family: 4, subnet: '10.0.0.0/8' },
          { address: `${e.ip6}/128`, gateway: gateway6, family: 6, subnet: 'fd00::/8' },
        ],
      });
      h.dp.upsertEndpoint({
        hostIfindex: e.ifindex,
        endpointId: e.id,
        identity,
        flags: 0,
        hostMac: e.hostMac,
        containerMac: e.mac,
        ips: [e.ip, e.ip6],
        gateway6,
      });
      await p.engine.endpointAttached(ep);
    }
  });
  p.apply = async (yaml) => {
    await p.engine.importText(yaml);
    await p.ops.revalidated();
  };
  p.clear = async () => {
    await p.engine.delete('all').catch(() => undefined);
    await p.ops.revalidated();
  };
  return p;
}
