// containerd's CRI as a label source: a pod's labels live in the runtime (kubelet hands them over in
// RunPodSandbox), not in the CNI call, so the agent asks the runtime for the sandbox of a CNI ADD.
//
// An ADD comes from a CRI runtime when CNI_ARGS name the pod (K8S_POD_NAMESPACE, K8S_POD_NAME); the
// sandbox id is K8S_POD_INFRA_CONTAINER_ID (or CNI_CONTAINERID). containerd (1.6) stores the sandbox
// only after the ADD returned, so the ADD never waits for it: the endpoint is pending (labels/
// resolver.ts) and PodSandboxStatus is asked every 25 ms, then less often, until the sandbox answers;
// that happens before kubelet starts the pod's first container. Afterwards ListPodSandbox is read
// every `pollMs` and an endpoint whose pod labels changed gets them (the runtime is the source of
// truth; CRI reports no label events).
import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { Endpoint } from '../types.ts';
import { type LabelSink, POD_INFRA_METADATA, POD_NAME_METADATA, POD_NAMESPACE_METADATA, type RuntimeSource } from './resolver.ts';
import { runtimeLabels, type Labels } from './sources.ts';
import { CRI_PROTO } from './cri-proto.ts';

export const DEFAULT_CRI_SOCKET = '/run/containerd/containerd.sock';

export interface CriLabelsOptions {
  socket: string;
  log: { info(o: object, msg: string): void; warn(o: object, msg: string): void; debug(o: object, msg: string): void };
  /** How often running pods' labels are compared with the runtime's (default 10 s). */
  pollMs?: number;
  /** Deadline of one CRI call (default 2 s). */
  callTimeoutMs?: number;
}

interface Sandbox {
  id: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

interface Watched {
  attachment: string;
  ifName: string;
  sandboxId: string;
  sink: LabelSink;
  /** Canonical text of the labels last reported (none yet: still waiting for the sandbox). */
  reported?: string;
}

type Rpc = (req: object, opts: { deadline: Date }, cb: (err: grpc.ServiceError | null, res: unknown) => void) => void;

export class CriLabels implements RuntimeSource {
  readonly name = 'cri' as const;
  private client?: grpc.Client & Record<string, Rpc>;
  private readonly watched = new Map<string, Watched>();
  private pollTimer?: NodeJS.Timeout;
  private readonly waiters = new Set<NodeJS.Timeout>();
  private closed = false;
  private warned = false;
  private readonly counters = { lookups: 0, found: 0, changes: 0, errors: 0 };

  constructor(private readonly o: CriLabelsOptions) {}

  /** A pod of a CRI runtime, when the runtime's socket is there to ask. */
  owns(ep: Pick<Endpoint, 'metadata'>): boolean {
    if (!ep.metadata?.[POD_NAMESPACE_METADATA] || !ep.metadata[POD_NAME_METADATA]) return false;
    try {
      if (fs.statSync(this.o.socket).isSocket()) return true;
    } catch {
      /* absent */
    }
    if (!this.warned) {
      this.warned = true;
      this.o.log.warn(
        { socket: this.o.socket },
        'no CRI runtime socket: pods get their namespace as their only k8s: label (set --cri-socket)',
      );
    }
    return false;
  }

  watch(ep: Endpoint, sink: LabelSink): void {
    const sandboxId = ep.metadata[POD_INFRA_METADATA] || ep.containerId;
    const key = `${ep.containerId}/${ep.ifName}`;
    const w: Watched = { attachment: ep.containerId, ifName: ep.ifName, sandboxId, sink };
    if (!ep.labelsPending) w.reported = canonical(ep.labels);
    this.watched.set(key, w);
    if (ep.labelsPending) this.waitFor(key, w, 0, 25);
    this.schedulePoll();
  }

  forget(ep: Endpoint): void {
    this.watched.delete(`${ep.containerId}/${ep.ifName}`);
  }

  status(): Record<string, unknown> {
    return {
      socket: this.o.socket,
      pods: this.watched.size,
      waiting: [...this.watched.values()].filter((w) => w.reported === undefined).length,
      ...this.counters,
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.pollTimer);
    for (const t of this.waiters) clearTimeout(t);
    this.waiters.clear();
    this.client?.close();
  }

  /** Asks for one sandbox until it answers: 25 ms apart, doubling up to 1 s. */
  private waitFor(key: string, w: Watched, attempt: number, delayMs: number): void {
    const t = setTimeout(
      async () => {
        this.waiters.delete(t);
        if (this.closed || this.watched.get(key) !== w) return;
        const sb = await this.sandbox(w.sandboxId);
        if (this.closed || this.watched.get(key) !== w) return;
        if (sb) {
          await this.report(w, sb);
          return;
        }
        this.waitFor(key, w, attempt + 1, Math.min(delayMs * 2, 1000));
      },
      attempt === 0 ? 0 : delayMs,
    );
    t.unref?.();
    this.waiters.add(t);
  }

  private async report(w: Watched, sb: Sandbox): Promise<void> {
    const { labels, dropped } = runtimeLabels(sb.labels, 'k8s');
    if (dropped.length && w.reported === undefined)
      this.o.log.warn(
        { sandbox: w.sandboxId, dropped },
        'pod labels that may not set security identity were dropped (namespace, reserved and Cilium-derived keys)',
      );
    const text = canonical(labels);
    if (w.reported === text) return;
    if (w.reported !== undefined) this.counters.changes++;
    else this.counters.found++;
    w.reported = text;
    await w.sink.found({ attachment: w.attachment, ifName: w.ifName, source: 'k8s', labels }).catch((err) => {
      w.reported = undefined;
      this.o.log.warn({ err, sandbox: w.sandboxId }, 'cannot apply pod labels from the runtime');
    });
  }

  /** The running pods' labels, compared with what was reported (label changes on a running pod). */
  private schedulePoll(): void {
    if (this.pollTimer || this.closed) return;
    this.pollTimer = setTimeout(async () => {
      this.pollTimer = undefined;
      if (!this.watched.size) return;
      const items = await this.call<{ items?: Sandbox[] }>('ListPodSandbox', {}).catch(() => undefined);
      const byId = new Map((items?.items ?? []).map((s) => [s.id, s]));
      for (const w of [...this.watched.values()]) {
        const sb = byId.get(w.sandboxId);
        if (sb && w.reported !== undefined) await this.report(w, sb);
      }
      this.schedulePoll();
    }, this.o.pollMs ?? 10_000);
    this.pollTimer.unref?.();
  }

  private async sandbox(id: string): Promise<Sandbox | undefined> {
    this.counters.lookups++;
    try {
      const r = await this.call<{ status?: Sandbox }>('PodSandboxStatus', { podSandboxId: id, verbose: false });
      return r.status?.id ? r.status : undefined;
    } catch (err) {
      const code = (err as grpc.ServiceError).code;
      if (code !== grpc.status.NOT_FOUND) {
        this.counters.errors++;
        this.o.log.debug({ sandbox: id, err: (err as Error).message }, 'CRI PodSandboxStatus failed');
      }
      return undefined;
    }
  }

  private call<T>(rpc: string, req: object): Promise<T> {
    const c = this.connect();
    return new Promise((resolve, reject) => {
      c[rpc].call(c, req, { deadline: new Date(Date.now() + (this.o.callTimeoutMs ?? 2000)) }, (err, res) =>
        err ? reject(err) : resolve(res as T),
      );
    });
  }

  private connect(): grpc.Client & Record<string, Rpc> {
    if (this.client) return this.client;
    const def = protoLoader.fromJSON(CRI_PROTO as unknown as Parameters<typeof protoLoader.fromJSON>[0], {
      keepCase: false,
      longs: String,
      enums: String,
      defaults: false,
    });
    const pkg = grpc.loadPackageDefinition(def) as unknown as {
      runtime: { v1: { RuntimeService: grpc.ServiceClientConstructor } };
    };
    this.client = new pkg.runtime.v1.RuntimeService(
      `unix://${this.o.socket}`,
      grpc.credentials.createInsecure(),
    ) as unknown as grpc.Client & Record<string, Rpc>;
    return this.client;
  }
}

/** The pod labels of a set (k8s: without the namespace, which comes from CNI_ARGS), as text. */
function canonical(labels: Labels): string {
  return Object.keys(labels)
    .filter((k) => k.startsWith('k8s:') && k !== POD_NAMESPACE_METADATA)
    .sort()
    .map((k) => `${k}=${labels[k]}`)
    .join('\n');
}
