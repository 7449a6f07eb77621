// Identities and network policy as an agent extension: hooks every endpoint's life (identity before
// the config is written, entries and flags before the program is attached), serves /v1/policy and
// /v1/identities, and registers the lookups flows use to name identities and rules.
import os from 'node:os';
import type { AgentExtension } from './agent.ts';
import { PolicyEngine } from '../policy/engine.ts';
import { datapathOps } from '../policy/datapath-ops.ts';
import { decodeRuleId } from '../policy/rule-id.ts';
import { dropReasonName } from '../flows/event.ts';
import type { Datapath } from '../bpf/datapath.ts';
import { identityRouter, policyRouter } from '../api/policy-routes.ts';
import { addressOnly } from '../net/index.ts';

const HOST_REFRESH_MS = 10_000;
const IDENTITY_SWEEP_MS = 60_000;

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

export function policyExtension(): AgentExtension {
  let engine: PolicyEngine | undefined;
  return {
    name: 'policy',
    async init(agent) {
      const log = agent.log.child({ component: 'policy' });
      const e = await PolicyEngine.open({ store: agent.store, ops: datapathOps(agent.datapath), hostAddresses, log });
      engine = e;
      agent.endpoints.addHooks({
        identityFor: (labels) => e.identityFor(labels),
        beforeAttach: (ep) => e.endpointAttached(ep),
        afterDelete: async (ep) => {
          await e.endpointDeleted(ep);
          // Its addresses may be handed out again: no flow of the old endpoint may carry over.
          try { agent.datapath.flushConntrack(ep.ips.map((ip) => addressOnly(ip.address))); } catch (err) { log.warn({ err }, 'conntrack flush failed'); }
        },
        afterLabelsChanged: (ep) => e.endpointLabelsChanged(ep),
      });
      agent.services.policy = {
        describeRule: (ruleId) => {
          const d = e.describeRule(ruleId);
          return d && { policy: d.policy, index: decodeRuleId(ruleId)!.index, direction: d.direction, action: d.action };
        },
      };
      agent.services.identities = { labelsOf: (id) => e.labelsOf(id) };
      agent.routers.push(
        { path: '/v1/policy', router: policyRouter(e, { auditMode: () => agent.cfg.policyAuditMode, drops: () => dropsByName(agent.datapath) }) },
        { path: '/v1/identities', router: identityRouter(e) },
      );
    },
    async start(agent) {
      const e = engine!;
      const log = agent.log.child({ component: 'policy' });
      const stats = await e.start();
      // Agent-wide switches live in the datapath's global config map.
      agent.datapath.setGlobalConfig({ events: agent.cfg.flowEvents, audit: agent.cfg.policyAuditMode, eventsPerSecond: agent.cfg.eventsPerSecond });
      log.info({ ...stats, ...e.mapUsage(), revision: e.revision, auditMode: agent.cfg.policyAuditMode }, 'policy engine started');
      Object.defineProperty(agent.statusExtras, 'policy', {
        enumerable: true, configurable: true,
        get: () => ({ revision: e.revision, policies: e.list().length, auditMode: agent.cfg.policyAuditMode, ...e.mapUsage() }),
      });
      const timers = [
        setInterval(() => { e.refreshHostAddresses().catch((err) => log.warn({ err }, 'host address refresh failed')); }, HOST_REFRESH_MS),
        setInterval(() => { e.sweepIdentities().catch((err) => log.warn({ err }, 'identity sweep failed')); }, IDENTITY_SWEEP_MS),
        setInterval(() => {
          try { agent.datapath.gcConntrack(); } catch (err) { log.warn({ err }, 'conntrack GC failed'); }
        }, agent.cfg.conntrackGcIntervalSeconds * 1000),
      ];
      for (const t of timers) t.unref();
      return { close: async () => { for (const t of timers) clearInterval(t); } };
    },
  };
}
