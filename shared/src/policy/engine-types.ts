// What the policy engine (engine.ts) takes and gives: its dependencies, the result of a change, its
// errors and the views it answers queries with. Types only, plus the error class.
import type { Store } from '../store/index.ts';
import type { IdentityBackend } from '../identity/allocator.ts';
import type { Labels } from '../identity/labels.ts';
import type { LabelFilter } from '../labels/filter.ts';
import type { FqdnState } from '../fqdn/state.ts';
import { MembraneError } from '../errors.ts';
import type { ApplyStats, PolicyDatapathOps } from './apply.ts';
import type { Entry } from './compile.ts';
import type { DesiredInput } from './desired.ts';
import type { L7Summary } from './l7.ts';
import { formatIssue, type PolicyIssue } from './parse.ts';
import type { PersistedPolicies, Plan, PolicyBackend } from './repository.ts';
import type { Selection } from './selection.ts';

/** Endpoint metadata that turns audit mode on for one endpoint at creation (CNI args, API). */
export const AUDIT_METADATA_KEY = 'membrane.io/policy-audit';

export type PolicyErrorCode =
  | 'bad_request'
  | 'policy_not_found'
  | 'endpoint_not_found'
  | 'identity_not_found'
  | 'policy_store_damaged';

/** A policy error; invalid input carries its issues (file:line:column, field) in the message and as details. */
export class PolicyError extends MembraneError<PolicyErrorCode> {
  override readonly name = 'PolicyError';
  constructor(
    code: PolicyErrorCode,
    message: string,
    readonly issues?: PolicyIssue[],
  ) {
    super(
      code,
      issues?.length ? `${message}:\n${issues.map((i) => `  ${formatIssue(i)}`).join('\n')}` : message,
      issues ? { details: { issues } } : {},
    );
  }
}

export interface EngineLog {
  info(o: object, msg: string): void;
  warn(o: object, msg: string): void;
}

export interface PolicyEngineDeps {
  store: Store;
  ops: PolicyDatapathOps;
  hostAddresses: () => string[];
  log?: EngineLog;
  identityGraceMs?: number;
  /** Back-off of the retries of a refused sync nobody waits on (engine-events.ts; default 500 ms to 10 s). */
  syncRetryMs?: { min: number; max: number };
  /** Where the L7 proxies listen (ports go into the datapath with L7 entries); none: L7 policies are refused. */
  proxyPorts?: () => DesiredInput['proxyPorts'];
  /** Sets up what diverts flows to the proxies (l7/activation.ts). Called before the first change
   *  whose policies have L7 or DNS rules is written, so no entry sends a flow to a proxy the node
   *  cannot deliver it to; idempotent; a throw fails that change with nothing written. */
  activateProxies?: () => void;
  /** Cluster mode: identities and policies live in the cluster store (default: the node's store). */
  identityBackend?: IdentityBackend;
  policyBackend?: PolicyBackend & { reload?(): Promise<PersistedPolicies> };
  /** Called after the maps changed (the L7 proxy then takes a new snapshot). */
  onChange?: () => void;
  /** This node's cluster, for selectors on Cilium's derived cluster label (default: "default"). */
  cluster?: string;
  /** What DNS taught (toFQDNs): its addresses enter the ipcache with FQDN identities. */
  fqdn?: FqdnState;
  /** Which labels take part in an identity (--label-filter). */
  labelFilter?: LabelFilter;
  /** Imports this big or bigger are read in a worker thread (default parse-offloop.ts's; 0: all). */
  parseOffloadBytes?: number;
}

export interface ChangeResult {
  revision: number;
  changes: Plan['changes'];
  stats: ApplyStats;
  /** Time from the request to the maps holding the new state (before the store write). */
  enforcedMs: number;
  totalMs: number;
  /** Where the time went: reading the documents, computing and writing the maps, the store write. */
  timings: { parseMs: number; syncMs: number; storeMs: number };
}

export interface EgressEntry {
  endpoint: number;
  identity: number;
  /** The destination's identity, as the ipcache has it. */
  peer: number;
  entry?: Entry;
  defaultDeny: boolean;
  /** The endpoint's egress is looked up at all (some policy selects it). */
  lookup: boolean;
}

export interface EndpointPolicyView {
  identity: number;
  labels: Labels;
  audit: boolean;
  /** Closed by the init policy (labels pending and some policy exists), not by a selecting policy. */
  init: boolean;
  enforcement: { ingress: 'default-deny' | 'rules-only' | 'allow-all'; egress: 'default-deny' | 'rules-only' | 'allow-all' };
  policies: Selection['policies'];
  /** Policy map entries for this endpoint. */
  entries: number;
  /** Ports whose traffic goes through the L7 proxy, with the HTTP rules. */
  l7: L7Summary[];
}
