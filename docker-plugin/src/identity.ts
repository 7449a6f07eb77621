// Which container is behind a Docker endpoint, learnt from the Docker API: plugin calls carry only
// NetworkID/EndpointID, and dockerd waits on the plugin, so nothing here ever runs inside a handler.
// Sources: the event stream (network "connect", container "rename"), a full sync whenever the stream
// (re)connects, and a per-network sync shortly after a Join that no event explained. The container's
// labels (image labels first, container labels over them) plus docker:container-id/-name and
// docker:network-name become the core endpoint's labels.
import Docker from 'dockerode';
import type { Logger } from 'pino';
import type { Core } from '../../shared/src/core.ts';
import type { DockerState, EndpointRecord } from './state.ts';
import { kindOf } from '../../shared/src/errors.ts';

export interface IdentityOptions {
  core: Core;
  state: DockerState;
  log: Logger;
  socketPath: string;
  /** Sync a joined endpoint's network when no event resolved it within this time; default 1500 ms. */
  fallbackMs?: number;
}

const MAX_KEY = 253;
const MAX_VALUE = 1024;

export function endpointLabels(
  c: { id: string; name: string; labels?: Record<string, string> | null; imageLabels?: Record<string, string> | null },
  networkName: string,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...(c.imageLabels ?? {}), ...(c.labels ?? {}) })) {
    if (k && k.length <= MAX_KEY && typeof v === 'string' && v.length <= MAX_VALUE) out[k] = v;
  }
  out['docker:container-id'] = c.id;
  out['docker:container-name'] = c.name.replace(/^\//, '');
  if (networkName) out['docker:network-name'] = networkName;
  return out;
}

export class ContainerIdentity {
  private readonly api: Docker;
  private readonly events: Docker;
  private stream: NodeJS.ReadableStream | null = null;
  private stopped = false;
  private loopDone: Promise<void> = Promise.resolve();
  private readonly inflight = new Map<string, Promise<void>>();
  private readonly again = new Set<string>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly imageLabels = new Map<string, Record<string, string>>();
  private wake: (() => void) | null = null;

  constructor(private readonly o: IdentityOptions) {
    this.api = new Docker({ socketPath: o.socketPath, timeout: 15_000 });
    this.events = new Docker({ socketPath: o.socketPath });
  }

  start(): void {
    this.loopDone = this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.wake?.();
    (this.stream as unknown as { destroy?: () => void } | null)?.destroy?.();
    await this.loopDone;
    await Promise.allSettled([...this.inflight.values()]);
  }

  /** Called by Join (after it answered): make sure the endpoint gets its container soon. */
  joined(ep: EndpointRecord): void {
    if (this.stopped) return;
    const t = setTimeout(() => {
      this.timers.delete(t);
      const rec = this.o.state.endpoints.get(ep.endpointId);
      if (rec && !rec.container) void this.syncNetwork(rec.networkId);
    }, this.o.fallbackMs ?? 1500);
    t.unref?.();
    this.timers.add(t);
  }

  /** Resolves every endpoint of every Docker network we serve (start, stream reconnect). */
  async syncAll(): Promise<void> {
    for (const id of [...this.o.state.networks.keys()]) await this.syncNetwork(id);
  }

  async syncNetwork(networkId: string): Promise<void> {
    if (this.stopped) return;
    let list: Docker.ContainerInfo[];
    try {
      list = await this.api.listContainers({ filters: { network: [networkId] } });
    } catch (err) {
      this.o.log.debug({ err: (err as Error).message, network: networkId }, 'cannot list containers of a docker network');
      return;
    }
    const mine = new Set([...this.o.state.endpoints.values()].filter((e) => e.networkId === networkId).map((e) => e.endpointId));
    const jobs = list
      .filter((c) => Object.values(c.NetworkSettings?.Networks ?? {}).some((n) => mine.has(n.EndpointID)))
      .map((c) => this.resolve(c.Id));
    await Promise.allSettled(jobs);
  }

  /** Inspects one container and labels each of its endpoints we own. Coalesces concurrent calls. */
  resolve(containerId: string): Promise<void> {
    const running = this.inflight.get(containerId);
    if (running) { this.again.add(containerId); return running; }
    const job = this.resolveNow(containerId)
      .catch((err) => this.o.log.debug({ err: (err as Error).message, container: containerId }, 'cannot resolve container'))
      .finally(() => {
        this.inflight.delete(containerId);
        if (this.again.delete(containerId) && !this.stopped) void this.resolve(containerId);
      });
    this.inflight.set(containerId, job);
    return job;
  }

  private async resolveNow(containerId: string): Promise<void> {
    let info: Docker.ContainerInspectInfo;
    try {
      info = await this.api.getContainer(containerId).inspect();
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404) return; // gone already
      throw err;
    }
    const imageLabels = await this.labelsOfImage(info.Image);
    for (const [netName, n] of Object.entries(info.NetworkSettings?.Networks ?? {})) {
      const rec = this.o.state.endpoints.get(n.EndpointID);
      if (!rec) continue;
      const labels = endpointLabels({ id: info.Id, name: info.Name, labels: info.Config?.Labels, imageLabels }, netName);
      const container = { id: info.Id, name: info.Name.replace(/^\//, '') };
      if (rec.container?.id === container.id && rec.container.name === container.name && sameLabels(rec.labels, labels)) continue;
      try {
        await this.o.core.endpoints.updateLabels(rec.endpointId, rec.ifName, labels, container);
      } catch (err) {
        if (kindOf(err) === 'endpoint_not_found') continue; // deleted meanwhile
        throw err;
      }
      const latest = this.o.state.endpoints.get(n.EndpointID);
      if (latest) await this.o.state.setEndpoint({ ...latest, container, labels });
      this.o.log.info({ endpoint: n.EndpointID.slice(0, 12), container: container.name }, 'endpoint labelled with its container');
    }
  }

  private async labelsOfImage(imageId: string): Promise<Record<string, string>> {
    if (!imageId) return {};
    const cached = this.imageLabels.get(imageId);
    if (cached) return cached;
    try {
      const img = await this.api.getImage(imageId).inspect();
      const labels = (img.Config?.Labels ?? {}) as Record<string, string>;
      this.imageLabels.set(imageId, labels);
      return labels;
    } catch {
      return {};
    }
  }

  private async loop(): Promise<void> {
    let delay = 500;
    let warned = false;
    while (!this.stopped) {
      try {
        const stream = await this.events.getEvents({
          filters: { type: ['network', 'container'], event: ['connect', 'rename'] },
        });
        if (this.stopped) { (stream as unknown as { destroy(): void }).destroy(); break; }
        this.stream = stream;
        if (warned) this.o.log.info({ socket: this.o.socketPath }, 'connected to the Docker API');
        warned = false;
        delay = 500;
        const ended = this.consume(stream);
        await this.syncAll();
        await ended;
      } catch (err) {
        if (this.stopped) break;
        if (!warned) this.o.log.warn({ socket: this.o.socketPath, err: (err as Error).message }, 'Docker API unreachable: container labels wait until it answers');
        warned = true;
      } finally {
        this.stream = null;
      }
      if (this.stopped) break;
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => { this.wake = null; resolve(); }, delay);
        this.wake = () => { clearTimeout(t); resolve(); };
      });
      delay = Math.min(delay * 2, 10_000);
    }
  }

  private consume(stream: NodeJS.ReadableStream): Promise<void> {
    return new Promise<void>((resolve) => {
      let buf = '';
      stream.on('data', (chunk: Buffer | string) => {
        buf += chunk.toString();
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i).trim();
          buf = buf.slice(i + 1);
          if (line) this.onEvent(line);
        }
      });
      stream.on('end', () => resolve());
      stream.on('close', () => resolve());
      stream.on('error', () => resolve());
    });
  }

  private onEvent(line: string): void {
    let ev: { Type?: string; Action?: string; Actor?: { ID?: string; Attributes?: Record<string, string> } };
    try { ev = JSON.parse(line); } catch { return; }
    const actor = ev.Actor?.ID ?? '';
    if (ev.Type === 'network' && ev.Action === 'connect' && this.o.state.networks.has(actor)) {
      const container = ev.Actor?.Attributes?.container;
      if (container) void this.resolve(container);
    } else if (ev.Type === 'container' && ev.Action === 'rename') {
      if ([...this.o.state.endpoints.values()].some((e) => e.container?.id === actor)) void this.resolve(actor);
    }
  }
}

function sameLabels(a: Record<string, string> | undefined, b: Record<string, string>): boolean {
  if (!a) return false;
  const ka = Object.keys(a), kb = Object.keys(b);
  return ka.length === kb.length && kb.every((k) => a[k] === b[k]);
}
