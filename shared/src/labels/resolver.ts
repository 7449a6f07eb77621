// The one place an endpoint's labels come from, whatever the front door (CNI, Docker, the API).
//
// An endpoint's labels are the union of
//   - what its caller passed (cni:/api: labels; labels/sources.ts refuses the ones a caller may not set),
//   - its pod namespace, k8s:io.kubernetes.pod.namespace, from CNI_ARGS K8S_POD_NAMESPACE only
//     (membrane-cni puts it in the request's metadata; a label of that name is refused),
//   - what its container runtime knows of the workload, from one runtime source: the pod's labels in
//     containerd's CRI sandbox (k8s:) or the Docker container's labels (container:).
// A runtime source usually answers after the endpoint exists (dockerd names the container only after
// Join; containerd 1.6 stores the sandbox only after the CNI ADD returned). Until it does, the
// endpoint is *pending*: its identity is init (closed while any policy exists) and its host link stays
// down, so the workload can neither be reached nor send: its first packets wait in its own neighbour
// queue (ARP/NDP are retried every second) instead of leaving under the wrong identity. When the
// labels arrive the identity and policy are put in place first, then the link comes up. A source that
// does not answer within the timeout leaves the endpoint up in init (fail closed), still watched.
import type { Endpoint, EndpointRequest } from '../types.ts';
import { MembraneError } from '../errors.ts';
import { callerLabels, NAMESPACE_KEY, ofSource, SOURCE, type Labels } from './sources.ts';

/** Metadata key membrane-cni fills from K8S_POD_NAMESPACE (cni/src/request.ts writes the same key). */
export const POD_NAMESPACE_METADATA = `k8s:${NAMESPACE_KEY}`;
export const POD_NAME_METADATA = 'k8s:io.kubernetes.pod.name';
export const POD_INFRA_METADATA = 'k8s:io.kubernetes.pod.infra-container-id';

export type PendingSource = 'docker' | 'cri';

/** Labels a runtime source found for an endpoint: the complete set of its source. */
export interface RuntimeLabels {
  attachment: string;
  ifName: string;
  source: 'container' | 'k8s';
  labels: Labels;
  /** A Docker endpoint's container. */
  container?: { id: string; name: string };
}

/** Where the resolver hands what it learns (the endpoint manager). */
export interface LabelSink {
  found(update: RuntimeLabels): Promise<unknown>;
  /** The source did not answer within the timeout: the endpoint goes on, in init. */
  expired(attachment: string, ifName: string): Promise<unknown>;
}

/** A container runtime that knows workloads' labels. */
export interface RuntimeSource {
  readonly name: PendingSource;
  /** Are this endpoint's labels this runtime's to give? (Decided from the request alone.) */
  owns(ep: Pick<Endpoint, 'docker' | 'metadata' | 'containerId'>): boolean;
  /** Follow the endpoint's workload: report its labels through the sink now and when they change. */
  watch(ep: Endpoint, sink: LabelSink): void;
  forget(ep: Endpoint): void;
  close(): Promise<void>;
  /** For status. */
  status?(): Record<string, unknown>;
}

export interface ResolverOptions {
  sources: RuntimeSource[];
  /** How long an endpoint may stay pending (default 10 s). */
  timeoutMs?: number;
  log?: { info(o: object, msg: string): void; warn(o: object, msg: string): void };
}

export const DEFAULT_LABEL_TIMEOUT_MS = 10_000;

export class LabelResolver {
  private sink?: LabelSink;
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly counters = { resolved: 0, expired: 0 };
  readonly timeoutMs: number;

  constructor(private readonly o: ResolverOptions) {
    this.timeoutMs = o.timeoutMs ?? DEFAULT_LABEL_TIMEOUT_MS;
  }

  bind(sink: LabelSink): void {
    this.sink = sink;
  }

  /** The labels an endpoint starts with, and the runtime that still owes the rest. Throws bad_request
   *  naming the first label a caller may not set (nothing has been done yet). */
  initial(
    req: EndpointRequest,
    caller: 'cni' | 'api' = req.metadata?.['cni:plugin'] ? 'cni' : 'api',
  ): { labels: Labels; pending?: PendingSource } {
    const own = callerLabels(req.labels, caller);
    if (own.problems.length) {
      const p = own.problems[0];
      throw new MembraneError(
        'bad_request',
        `label ${p.message}${own.problems.length > 1 ? ` (and ${own.problems.length - 1} more)` : ''}`,
        { field: `labels.${p.key}` },
      );
    }
    const labels = { ...own.labels, ...podLabels(req.metadata) };
    const source = this.o.sources.find((s) =>
      s.owns({ docker: req.docker, metadata: req.metadata ?? {}, containerId: req.containerId }),
    );
    return source ? { labels, pending: source.name } : { labels };
  }

  /** A caller's new labels (PUT .../labels): they replace the caller labels; runtime labels stay. */
  withCallerLabels(ep: Endpoint, labels: Labels): Labels {
    const own = callerLabels(labels, 'api');
    if (own.problems.length) {
      const p = own.problems[0];
      throw new MembraneError('bad_request', `label ${p.message}`, { field: `labels.${p.key}` });
    }
    return { ...runtimeOnly(ep.labels), ...own.labels, ...podLabels(ep.metadata) };
  }

  /** An endpoint's labels with a runtime source's new set in place of its old one. */
  merge(ep: Endpoint, u: RuntimeLabels): Labels {
    const keep: Labels = {};
    for (const [k, v] of Object.entries(ep.labels)) if (!(k in ofSource({ [k]: v }, u.source))) keep[k] = v;
    return { ...keep, ...u.labels, ...podLabels(ep.metadata) };
  }

  /** After an endpoint is created or restored: its runtime follows it; a pending one gets a deadline. */
  watch(ep: Endpoint): void {
    const source = this.o.sources.find((s) => s.owns(ep));
    if (!source || !this.sink) return;
    if (ep.labelsPending && !ep.labelsPending.expired) this.arm(ep);
    source.watch(ep, this.countingSink());
  }

  forget(ep: Endpoint): void {
    this.disarm(keyOf(ep.docker?.endpointId ?? ep.containerId, ep.ifName));
    for (const s of this.o.sources) if (s.owns(ep)) s.forget(ep);
  }

  /** A pending endpoint got its labels. */
  settled(attachment: string, ifName: string): void {
    this.disarm(keyOf(attachment, ifName));
  }

  status(): Record<string, unknown> {
    return {
      timeoutMs: this.timeoutMs,
      pending: this.timers.size,
      ...this.counters,
      sources: Object.fromEntries(this.o.sources.map((s) => [s.name, s.status?.() ?? {}])),
    };
  }

  async close(): Promise<void> {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    for (const s of this.o.sources) await s.close();
  }

  private countingSink(): LabelSink {
    const sink = this.sink!;
    return {
      found: async (u) => {
        this.disarm(keyOf(u.attachment, u.ifName));
        this.counters.resolved++;
        return sink.found(u);
      },
      expired: (a, i) => sink.expired(a, i),
    };
  }

  private arm(ep: Endpoint): void {
    const attachment = ep.docker?.endpointId ?? ep.containerId;
    const key = keyOf(attachment, ep.ifName);
    if (this.timers.has(key)) return;
    const since = Date.parse(ep.labelsPending!.since);
    const left = Math.max(0, (Number.isFinite(since) ? since : Date.now()) + this.timeoutMs - Date.now());
    const t = setTimeout(() => {
      this.timers.delete(key);
      this.counters.expired++;
      this.o.log?.warn(
        { endpoint: key, source: ep.labelsPending!.source, timeoutMs: this.timeoutMs },
        "the runtime did not tell the endpoint's labels in time: it goes on with identity init (closed while any policy exists)",
      );
      this.sink
        ?.expired(attachment, ep.ifName)
        .catch((err) => this.o.log?.warn({ err, endpoint: key }, 'cannot bring up an endpoint whose labels expired'));
    }, left);
    t.unref?.();
    this.timers.set(key, t);
  }

  private disarm(key: string): void {
    const t = this.timers.get(key);
    if (t) {
      clearTimeout(t);
      this.timers.delete(key);
    }
  }
}

/** The pod namespace label, from the request's metadata (K8S_POD_NAMESPACE) only. */
export function podLabels(metadata: Record<string, string> | undefined): Labels {
  const ns = metadata?.[POD_NAMESPACE_METADATA];
  return ns ? { [`${SOURCE.k8s}:${NAMESPACE_KEY}`]: ns } : {};
}

/** Labels a runtime gave (k8s: except the namespace, container:, and older docker: ones). */
function runtimeOnly(labels: Labels): Labels {
  return { ...ofSource(labels, SOURCE.k8s), ...ofSource(labels, SOURCE.container) };
}

function keyOf(attachment: string, ifName: string): string {
  return `${attachment}/${ifName}`;
}
