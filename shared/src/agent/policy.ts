// Identities and network policy in the agent: the engine over the pinned maps, the endpoint hooks that
// keep it in step (identity before the config is written, entries and flags before the program is
// attached), /v1/policy and /v1/identities, and the lookups flows name identities and rules with.
// Its dependencies are its parameters; the composition root (agent.ts) decides the order.
import os from 'node:os';
import type express from 'express';
import type { IdentityLookup, PolicyLookup } from '../core.ts';
import type { Datapath } from '../bpf/datapath.ts';
import type { EndpointHooks } from '../endpoint/manager.ts';
import type { Logger } from '../log.ts';
import type { Store } from '../store/index.ts';
import { PolicyEngine } from '../policy/engine.ts';
import { datapathOps } from '../policy/datapath-ops.ts';
import { decodeRuleId } from '../policy/rule-id.ts';
import { dropReasonName, policyMatchType } from '../flows/codes.ts';
import { identityRouter, policyRouter } from '../api/policy-routes.ts';
import type { ClusterMode } from '../cluster/mode.ts';
import type { FqdnState } from '../fqdn/state.ts';
import type { LabelFilter } from '../labels/filter.ts';

const HOST_REFRESH_MS = 10_000;
const IDENTITY_SWEEP_MS = 60_000;

export interface PolicyDeps {
  store: Store;
  datapath: Datapath;
  log: Logger;
  /** Agent-wide audit mode (--policy-audit-mode), reported by /v1/policy/status. */
  auditMode: boolean;
  /** Cluster mode: identities and policies live in the cluster store. */
  cluster?: ClusterMode;
  /** The L7 proxies: their ports go into L7 entries (HTTP, DNS); the HTTP one hears about every change. */
  l7?: { proxyPorts: () => { http?: number; dns?: number }; activate?: () => void; onChange?: () => void };
  /** What DNS taught (toFQDNs), from the DNS proxy's part. */
  fqdn?: FqdnState;
  /** The cluster this node is in ("default" on a single node): what Cilium's derived cluster label holds. */
  clusterName?: string;
  /** Which labels take part in an identity (--label-filter). */
  labelFilter?: LabelFilter;
}

/** Every address of the node's own interfaces (its netns): traffic from them is the host identity.
 *  IPv6 link-local addresses are left out: every host veth has one (they would change with every
 *  endpoint), and what uses them (neighbour discovery) passes policy anyway. */
export function hostAddresses(): string[] {
  const out = new Set<string>();
  for (const addrs of Object.values(os.networkInterfaces())) {
    for (const a of addrs ?? []) {
      if (a.address.includes('%') || /^fe[89ab]/i.test(a.address)) continue;
      out.add(a.address);
    }
  }
  return [...out].sort();
}

function dropsByName(dp: Datapath): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [reason, c] of Object.entries(dp.dropCounters())) out[dropReasonName(Number(reason))] = Number(c.packets);
  return out;
}

export class AgentPolicy {
  private timers: NodeJS.Timeout[] = [];
  private readonly log: Logger;

  private constructor(
    readonly engine: PolicyEngine,
    private readonly d: PolicyDeps,
  ) {
    this.log = d.log.child({ component: 'policy' });
  }

  /** Opens the engine on the pinned maps (before endpoints exist: they ask it for identities). */
  static async open(d: PolicyDeps): Promise<AgentPolicy> {
    const log = d.log.child({ component: 'policy' });
    const engine = await PolicyEngine.open({
      store: d.store,
      ops: datapathOps(d.datapath, { log }),
      hostAddresses,
      log,
      cluster: d.clusterName ?? 'default',
      labelFilter: d.labelFilter,
      ...(d.cluster ? { identityBackend: d.cluster.identities, policyBackend: d.cluster.policies } : {}),
      ...(d.l7
        ? {
            proxyPorts: d.l7.proxyPorts,
            ...(d.l7.activate ? { activateProxies: d.l7.activate } : {}),
            ...(d.l7.onChange ? { onChange: d.l7.onChange } : {}),
          }
        : {}),
      ...(d.fqdn ? { fqdn: d.fqdn } : {}),
    });
    await d.cluster?.attachEngine(engine);
    return new AgentPolicy(engine, d);
  }

  identityFor = (labels: Record<string, string>): Promise<number> => this.engine.identityFor(labels);

  /** What the endpoint manager tells the engine. */
  readonly hooks: EndpointHooks = {
    beforeAttach: (ep) => this.engine.endpointAttached(ep),
    afterDelete: (ep) => this.engine.endpointDeleted(ep),
    afterLabelsChanged: (ep) => this.engine.endpointLabelsChanged(ep),
  };

  readonly rules: PolicyLookup = {
    describeRule: (ruleId) => {
      const d = this.engine.describeRule(ruleId);
      if (!d) return undefined;
      const rec = this.engine.get(d.policy);
      const rule = rec?.policy.specs.flatMap((s) => s.rules).find((r) => r.path === d.path);
      return {
        policy: d.policy,
        index: decodeRuleId(ruleId)!.index,
        direction: d.direction,
        action: d.action,
        path: d.path,
        ...(rec
          ? {
              kind: rec.policy.kind,
              revision: rec.revision,
              ...(rec.policy.namespace ? { namespace: rec.policy.namespace } : {}),
            }
          : {}),
        ...(rule ? { matchType: policyMatchType(rule) } : {}),
      };
    },
    policies: () =>
      this.engine.list().map((p) => ({
        name: p.name,
        kind: p.policy.kind,
        revision: p.revision,
        rules: p.policy.specs.reduce((n, s) => n + s.rules.length, 0),
        ...(p.policy.namespace ? { namespace: p.policy.namespace } : {}),
      })),
    revision: () => this.engine.revision,
  };

  readonly identities: IdentityLookup = { labelsOf: (id) => this.engine.labelsOf(id) };

  routers(): { path: string; router: express.Router }[] {
    return [
      {
        path: '/v1/policy',
        router: policyRouter(this.engine, { auditMode: () => this.d.auditMode, drops: () => dropsByName(this.d.datapath) }),
      },
      { path: '/v1/identities', router: identityRouter(this.engine) },
    ];
  }

  /** After the endpoints are restored: one full sync, then periodic host-address and identity upkeep. */
  async start(): Promise<void> {
    const e = this.engine;
    const stats = await e.start();
    this.log.info({ ...stats, ...e.mapUsage(), revision: e.revision, auditMode: this.d.auditMode }, 'policy engine started');
    this.timers = [
      setInterval(() => {
        e.refreshHostAddresses().catch((err) => this.log.warn({ err }, 'host address refresh failed'));
      }, HOST_REFRESH_MS),
      setInterval(() => {
        e.sweepIdentities().catch((err) => this.log.warn({ err }, 'identity sweep failed'));
      }, IDENTITY_SWEEP_MS),
    ];
    for (const t of this.timers) t.unref();
  }

  status(): Record<string, unknown> {
    return {
      revision: this.engine.revision,
      policies: this.engine.list().length,
      auditMode: this.d.auditMode,
      ...this.engine.mapUsage(),
    };
  }

  /** Stored policies the agent could not load at start, for the status' store part. */
  storeProblem(): string | undefined {
    const p = this.engine.storedPolicyProblems;
    if (!p.length) return undefined;
    const names = this.engine
      .damagedPolicyNames()
      .map((n) => `"${n}"`)
      .join(', ');
    return `${p.length} stored ${p.length === 1 ? 'policy' : 'policies'} not loaded: ${p.map((x) => `${x.key} (${x.reason})`).join('; ')}; policy maps held at the last enforced state (new endpoints: default deny), other policy changes refused until ${names} ${p.length === 1 ? 'is' : 'are'} imported again or deleted`;
  }

  async close(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
  }
}
