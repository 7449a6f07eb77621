// The error kinds a caller of the core can meet, and the one table that says what each means at every
// front door: the agent API's HTTP status, membrane-cni's CNI error code, the hint added to the
// libnetwork "Err" text Docker users read. Code anywhere throws a MembraneError with a kind; the API
// server, membrane-cni and the Docker plugin only look the kind up here. Errors that are not
// MembraneErrors (netlink, sysctl, a bug) are "internal": a vanished sysctl during an ADD is the
// agent's problem (HTTP 500, CNI 100), never the caller's "not found".
// Pure constants and one class: the CNI executable bundles this file.

/** CNI error codes: 1-99 are the spec's (§"Error"), 100+ are membrane-cni's own (cni/README.md). */
export const CniCode = {
  INCOMPATIBLE_VERSION: 1,
  UNSUPPORTED_FIELD: 2,
  UNKNOWN_CONTAINER: 3,
  INVALID_ENV: 4,
  IO: 5,
  DECODE: 6,
  INVALID_CONFIG: 7,
  TRY_AGAIN_LATER: 11,
  NOT_AVAILABLE: 50,
  NOT_AVAILABLE_DEGRADED: 51,
  /** The agent answered with an internal error. */
  AGENT_INTERNAL: 100,
  /** A delegated plugin (IPAM) could not be run or answered something unreadable. */
  DELEGATE_FAILED: 101,
  /** CHECK found the attachment differs from prevResult or is not fully in place. */
  CHECK_FAILED: 102,
  /** A bug in membrane-cni itself. */
  INTERNAL: 999,
} as const;

/** The classes of kinds (what a client may do about it). */
export type ErrorClass = 'invalid_argument' | 'not_found' | 'conflict' | 'unavailable' | 'internal';

interface KindInfo {
  class: ErrorClass;
  /** Agent API status. */
  http: number;
  /** membrane-cni's code when the agent answers with this kind. */
  cni: number;
  /** What a Docker user can do, appended to the plugin's Err text. */
  docker?: string;
}

/** Every kind; the key is the stable wire name (`error.code` in API answers). */
export const ERROR_KINDS = {
  // invalid argument: the message (and `field` when set) names what was wrong
  bad_request: { class: 'invalid_argument', http: 400, cni: CniCode.INVALID_CONFIG },
  netns_not_found: { class: 'invalid_argument', http: 400, cni: CniCode.INVALID_ENV },
  /** The netns is the agent's own (or the init process's): configuring it would rewire the node. */
  netns_not_allowed: { class: 'invalid_argument', http: 400, cni: CniCode.INVALID_ENV },
  address_out_of_range: {
    class: 'invalid_argument',
    http: 400,
    cni: CniCode.INVALID_CONFIG,
    docker: "--ip must lie inside the network's --subnet",
  },
  payload_too_large: { class: 'invalid_argument', http: 413, cni: CniCode.INVALID_CONFIG },
  // not found: the object the caller named does not exist
  endpoint_not_found: { class: 'not_found', http: 404, cni: CniCode.UNKNOWN_CONTAINER },
  network_not_found: { class: 'not_found', http: 404, cni: CniCode.INVALID_CONFIG },
  policy_not_found: { class: 'not_found', http: 404, cni: CniCode.INVALID_CONFIG },
  identity_not_found: { class: 'not_found', http: 404, cni: CniCode.INVALID_CONFIG },
  /** No such API path: the client and the agent disagree on the API. */
  not_found: { class: 'not_found', http: 404, cni: CniCode.AGENT_INTERNAL },
  // conflict: the request clashes with what exists
  endpoint_exists: { class: 'conflict', http: 409, cni: CniCode.INVALID_ENV },
  /** A name given for an endpoint (a container id prefix, a name) fits several: details.candidates lists them. */
  endpoint_ambiguous: { class: 'conflict', http: 409, cni: CniCode.INVALID_ENV },
  network_exists: { class: 'conflict', http: 409, cni: CniCode.INVALID_CONFIG },
  network_in_use: { class: 'conflict', http: 409, cni: CniCode.TRY_AGAIN_LATER },
  address_in_use: { class: 'conflict', http: 409, cni: CniCode.TRY_AGAIN_LATER, docker: 'pick another --ip' },
  pool_exhausted: {
    class: 'conflict',
    http: 409,
    cni: CniCode.TRY_AGAIN_LATER,
    docker: 'remove unused containers or create the network with a larger --subnet',
  },
  // unavailable: nothing wrong with the request, try again (a full disk, a map at capacity)
  unavailable: { class: 'unavailable', http: 503, cni: CniCode.TRY_AGAIN_LATER },
  /** The agent's state disk is full (ENOSPC, EDQUOT): nothing was changed; retry once there is room. */
  storage_full: {
    class: 'unavailable',
    http: 507,
    cni: CniCode.TRY_AGAIN_LATER,
    docker: "free space on the membrane agent's --state-dir disk, then retry",
  },
  /** Cluster mode: etcd did not answer in time (a new label set needs it for its identity). */
  kvstore_unavailable: {
    class: 'unavailable',
    http: 503,
    cni: CniCode.TRY_AGAIN_LATER,
    docker: 'the cluster store (etcd) is not reachable; retry when it is back',
  },
  /** A stored policy could not be read: the policy maps are held at their last enforced state and
   *  only re-importing or deleting that policy is taken (details in `membrane status`). */
  policy_store_damaged: { class: 'unavailable', http: 503, cni: CniCode.TRY_AGAIN_LATER },
  internal: { class: 'internal', http: 500, cni: CniCode.AGENT_INTERNAL },
} as const satisfies Record<string, KindInfo>;

export type ErrorKind = keyof typeof ERROR_KINDS;

export function isErrorKind(code: unknown): code is ErrorKind {
  return typeof code === 'string' && Object.hasOwn(ERROR_KINDS, code);
}

export function kindInfo(kind: ErrorKind): KindInfo {
  return ERROR_KINDS[kind];
}

export interface MembraneErrorOptions {
  /** The request field that was wrong (invalid_argument), e.g. "ifName" or "ips.0". */
  field?: string;
  /** Structured details sent along (e.g. policy issues with line and column). */
  details?: unknown;
  cause?: unknown;
}

/** An error a front door can answer with: a kind from ERROR_KINDS and a message naming the object. */
export class MembraneError<K extends ErrorKind = ErrorKind> extends Error {
  readonly field?: string;
  readonly details?: unknown;
  constructor(
    readonly code: K,
    message: string,
    opts: MembraneErrorOptions = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'MembraneError';
    if (opts.field !== undefined) this.field = opts.field;
    if (opts.details !== undefined) this.details = opts.details;
  }
}

/** The kind of any thrown value: its own for a MembraneError, "internal" for everything else. */
export function kindOf(err: unknown): ErrorKind {
  return err instanceof MembraneError ? err.code : 'internal';
}
