// Which policies select a label set, and the endpoint flags that follow. Cheap and independent of
// the peer universe, so a restored endpoint gets its flags before its program is attached without
// compiling everything. Pure.
import type { Labels } from '../identity/labels.ts';
import { EP_FLAGS } from './map-codec.ts';
import { matches } from './selector.ts';
import type { PolicyRecord } from './types.ts';

export interface Selection {
  /** The endpoint's labels are pending (identity init) and some policy exists: the init policy
   *  closes it both ways (rules selecting reserved:init can still open it). */
  init: boolean;
  /** Per policy that selects the labels: which directions it makes default-deny, which have rules. */
  policies: { name: string; revision: number; ingress: boolean; egress: boolean; rules: { ingress: number; egress: number } }[];
  ingress: { defaultDeny: boolean; hasRules: boolean };
  egress: { defaultDeny: boolean; hasRules: boolean };
}

/** The init policy: an endpoint whose labels a runtime still owes (identity init, a short bounded
 *  state: labels/resolver.ts) is closed both ways while any policy exists: no policy can have
 *  selected it yet, and a pod a policy will select must never be open. Rules selecting
 *  `reserved:init` can still let things through. With no policy at all, everything is open, init
 *  included. An endpoint with no labels at all is not init: it has the identity of the empty set. */
export function initDefaultDeny(records: PolicyRecord[], labels: Labels): boolean {
  return records.length > 0 && Object.keys(labels).length === 1 && 'reserved:init' in labels;
}

export function selectionFor(records: PolicyRecord[], labels: Labels): Selection {
  const init = initDefaultDeny(records, labels);
  const out: Selection = {
    init,
    policies: [],
    ingress: { defaultDeny: init, hasRules: false },
    egress: { defaultDeny: init, hasRules: false },
  };
  for (const rec of records) {
    const hit = { name: rec.name, revision: rec.revision, ingress: false, egress: false, rules: { ingress: 0, egress: 0 } };
    let selected = false;
    for (const spec of rec.policy.specs) {
      if (!matches(spec.subject, labels)) continue;
      selected = true;
      hit.ingress ||= spec.defaultDeny.ingress;
      hit.egress ||= spec.defaultDeny.egress;
      for (const r of spec.rules) hit.rules[r.direction]++;
    }
    if (!selected) continue;
    out.policies.push(hit);
    out.ingress.defaultDeny ||= hit.ingress;
    out.egress.defaultDeny ||= hit.egress;
    out.ingress.hasRules ||= hit.rules.ingress > 0;
    out.egress.hasRules ||= hit.rules.egress > 0;
  }
  return out;
}

/** endpoint_config.flags policy bits: look up on new flows when default-deny or any rule applies. */
export function endpointFlags(sel: Selection, audit: boolean): number {
  let f = 0;
  if (sel.ingress.defaultDeny || sel.ingress.hasRules) f |= EP_FLAGS.ingressLookup;
  if (sel.egress.defaultDeny || sel.egress.hasRules) f |= EP_FLAGS.egressLookup;
  if (sel.ingress.defaultDeny) f |= EP_FLAGS.ingressDefaultDeny;
  if (sel.egress.defaultDeny) f |= EP_FLAGS.egressDefaultDeny;
  if (audit) f |= EP_FLAGS.audit;
  return f;
}
