// Docker as a label source: which container is behind a Docker endpoint, and its labels.
//
// dockerd tells a network plugin only NetworkID and EndpointID, and holds the container's lock while
// it calls the plugin (a container inspect from inside CreateEndpoint/Join waits for the whole start),
// so nothing here runs inside a plugin call and nothing here inspects a starting container. What is
// safe at any time: the event stream and the container list (dockerd's lock-free view), which knows a
// container's labels (image labels merged in) and name from the moment it is created.
//
// dockerd reports "network connect" (network N, container X) right after Join, well before X's
// process starts. The endpoint joined on N that no container has claimed yet is X's when it is the
// only one; when several containers join N at once, the container list names each endpoint once the
// containers started (re-read every second while any endpoint of N waits). A container already
// known on N is never matched again (a late event must not claim someone else's endpoint).
import type { Endpoint } from '../types.ts';
import type { LabelSink, RuntimeSource } from './resolver.ts';
import { runtimeLabels } from './sources.ts';
import type { DockerApiTarget } from './docker-host.ts';

export interface DockerLabelsOptions {
  target: DockerApiTarget;
  log: { info(o: object, msg: string): void; warn(o: object, msg: string): void; debug(o: object, msg: string): void };
  /** Re-read the container list of a network with waiting endpoints this often (default 1000 ms). */
  syncMs?: number;
  /** A Docker network's name (from events and the network list), for `membrane network list`. */
  onNetworkName?: (networkId: string, name: string) => void;
}

interface Watched {
  ep: Pick<Endpoint, 'ifName'> & { endpointId: string; networkId: string };
  containerId?: string;
  sink: LabelSink;
}

interface ContainerSummary {
  Id: string;
  Names?: string[];
  Labels?: Record<string, string> | null;
  NetworkSettings?: { Networks?: Record<string, { NetworkID?: string; EndpointID?: string }> };
}

/** The few Docker API calls used, over dockerode (loaded when the source starts). */
interface DockerApi {
  listContainers(o: object): Promise<ContainerSummary[]>;
  listNetworks(): Promise<{ Id: string; Name: string }[]>;
  getEvents(o: object): Promise<NodeJS.ReadableStream>;
}

export class DockerLabels implements RuntimeSource {
  readonly name = 'docker' as const;
  private readonly watched = new Map<string, Watched>();
  private api?: DockerApi;
  private events?: DockerApi;
  private starting?: Promise<void>;
  private stopped = false;
  private stream: NodeJS.ReadableStream | null = null;
  private loopDone: Promise<void> = Promise.resolve();
  private wake: (() => void) | null = null;
  private syncTimer?: NodeJS.Timeout;
  private readonly inflight = new Map<string, Promise<void>>();
  /** Containers asked for again while their read was in flight: read once more when it ends. */
  private readonly readAgain = new Set<string>();
  private connected = false;
  private readonly counters = { events: 0, matched: 0, syncs: 0, errors: 0 };

  constructor(private readonly o: DockerLabelsOptions) {}

  owns(ep: Pick<Endpoint, 'docker'>): boolean {
    return !!ep.docker;
  }

  watch(ep: Endpoint, sink: LabelSink): void {
    if (!ep.docker) return;
    this.watched.set(keyOf(ep.docker.endpointId, ep.ifName), {
      ep: { endpointId: ep.docker.endpointId, networkId: ep.docker.networkId, ifName: ep.ifName },
      ...(ep.containerId ? { containerId: ep.containerId } : {}),
      sink,
    });
    void this.start();
    // Restored with its container known: its labels and name may have changed while we were away.
    if (ep.containerId) void this.resolve(ep.containerId);
    this.scheduleSync();
  }

  forget(ep: Endpoint): void {
    if (ep.docker) this.watched.delete(keyOf(ep.docker.endpointId, ep.ifName));
  }

  status(): Record<string, unknown> {
    const waiting = [...this.watched.values()].filter((w) => !w.containerId).length;
    return {
      target: describeTarget(this.o.target),
      connected: this.connected,
      endpoints: this.watched.size,
      waiting,
      ...this.counters,
    };
  }

  async close(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.syncTimer);
    this.wake?.();
    (this.stream as unknown as { destroy?: () => void } | null)?.destroy?.();
    await this.loopDone;
    await Promise.allSettled([...this.inflight.values()]);
  }

  /** Follow Docker's networks (their names) now, before any endpoint asks for labels. */
  followNetworks(): void {
    void this.start();
  }

  private start(): Promise<void> {
    this.starting ??= (async () => {
      const { default: Docker } = await import('dockerode');
      const conn = connection(this.o.target);
      this.api = new Docker({ ...conn, timeout: 15_000 }) as unknown as DockerApi;
      this.events = new Docker(conn) as unknown as DockerApi;
      this.loopDone = this.loop();
    })();
    return this.starting;
  }

  /** Reads one container from the lock-free list and reports it for each endpoint it owns. */
  private resolve(containerId: string): Promise<void> {
    const running = this.inflight.get(containerId);
    if (running) {
      // That read may have picked its endpoints already: an endpoint claimed since (the container's
      // new endpoint when dockerd restarts it while its old one's labels are being read) would never
      // be told and would stay down until the label timeout.
      this.readAgain.add(containerId);
      return running;
    }
    const job = (async () => {
      await this.start();
      const [c] = await this.api!.listContainers({ all: true, filters: { id: [containerId] } });
      if (!c) return; // removed meanwhile
      const name = (c.Names?.[0] ?? '').replace(/^\//, '');
      const { labels, dropped } = runtimeLabels(c.Labels, 'container');
      if (dropped.length)
        this.o.log.warn(
          { container: name, dropped },
          'container labels that may not set security identity were dropped (namespace, reserved and Cilium-derived keys)',
        );
      for (const w of [...this.watched.values()].filter((x) => x.containerId === c.Id)) {
        await w.sink.found({
          attachment: w.ep.endpointId,
          ifName: w.ep.ifName,
          source: 'container',
          labels,
          container: { id: c.Id, name },
        });
      }
    })()
      .catch((err) => {
        this.counters.errors++;
        this.o.log.debug({ err: (err as Error).message, container: containerId }, 'cannot read a container from the Docker API');
      })
      .finally(() => {
        this.inflight.delete(containerId);
        if (this.readAgain.delete(containerId) && !this.stopped) void this.resolve(containerId);
      });
    this.inflight.set(containerId, job);
    return job;
  }

  private claim(w: Watched, containerId: string): void {
    w.containerId = containerId;
    this.counters.matched++;
    void this.resolve(containerId);
  }

  /** dockerd connected container X to network N (right after Join). */
  private connectedTo(networkId: string, containerId: string): void {
    const onNet = [...this.watched.values()].filter((w) => w.ep.networkId === networkId);
    if (onNet.some((w) => w.containerId === containerId)) {
      void this.resolve(containerId);
      return;
    }
    const waiting = onNet.filter((w) => !w.containerId);
    if (waiting.length === 1) this.claim(waiting[0], containerId);
    else this.scheduleSync(0);
  }

  /** The container list names the endpoint of every started container: match the waiting ones. */
  private async syncNetwork(networkId: string): Promise<void> {
    this.counters.syncs++;
    const list = await this.api!.listContainers({ all: true, filters: { network: [networkId] } });
    for (const c of list) {
      for (const n of Object.values(c.NetworkSettings?.Networks ?? {})) {
        if (!n.EndpointID) continue;
        for (const w of this.watched.values()) {
          if (w.ep.endpointId !== n.EndpointID) continue;
          if (w.containerId !== c.Id) this.claim(w, c.Id);
        }
      }
    }
  }

  private scheduleSync(delayMs = this.o.syncMs ?? 1000): void {
    if (this.stopped) return;
    if (this.syncTimer && delayMs > 0) return;
    clearTimeout(this.syncTimer);
    this.syncTimer = setTimeout(() => {
      this.syncTimer = undefined;
      const nets = new Set([...this.watched.values()].filter((w) => !w.containerId).map((w) => w.ep.networkId));
      if (!nets.size || !this.api) return;
      void (async () => {
        for (const n of nets)
          await this.syncNetwork(n).catch(() => {
            this.counters.errors++;
          });
        if ([...this.watched.values()].some((w) => !w.containerId)) this.scheduleSync();
      })();
    }, delayMs);
    this.syncTimer.unref?.();
  }

  private async syncAll(): Promise<void> {
    for (const n of await this.api!.listNetworks()) this.o.onNetworkName?.(n.Id, n.Name);
    for (const net of new Set([...this.watched.values()].map((w) => w.ep.networkId))) await this.syncNetwork(net);
  }

  private async loop(): Promise<void> {
    let delay = 500;
    let warned = false;
    while (!this.stopped) {
      try {
        const stream = await this.events!.getEvents({
          filters: { type: ['network', 'container'], event: ['connect', 'create', 'rename', 'start'] },
        });
        if (this.stopped) {
          (stream as unknown as { destroy(): void }).destroy();
          break;
        }
        this.stream = stream;
        this.connected = true;
        if (warned) this.o.log.info({ docker: describeTarget(this.o.target) }, 'connected to the Docker API');
        warned = false;
        delay = 500;
        const ended = this.consume(stream);
        await this.syncAll();
        await ended;
      } catch (err) {
        if (this.stopped) break;
        if (!warned)
          this.o.log.warn(
            { docker: describeTarget(this.o.target), err: (err as Error).message },
            'Docker API unreachable: Docker endpoints keep identity init until it answers',
          );
        warned = true;
      } finally {
        this.stream = null;
        this.connected = false;
      }
      if (this.stopped) break;
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          this.wake = null;
          resolve();
        }, delay);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
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
    try {
      ev = JSON.parse(line);
    } catch {
      return;
    }
    this.counters.events++;
    const actor = ev.Actor?.ID ?? '';
    const attrs = ev.Actor?.Attributes ?? {};
    if (ev.Type === 'network') {
      if (attrs.name) this.o.onNetworkName?.(actor, attrs.name);
      if (ev.Action === 'connect' && attrs.container) this.connectedTo(actor, attrs.container);
    } else if (ev.Type === 'container') {
      const known = [...this.watched.values()].some((w) => w.containerId === actor);
      if (ev.Action === 'rename' && known) void this.resolve(actor);
      // A started container is in the list with its endpoints: match what still waits.
      if (ev.Action === 'start' && [...this.watched.values()].some((w) => !w.containerId)) this.scheduleSync(0);
    }
  }
}

function keyOf(endpointId: string, ifName: string): string {
  return `${endpointId}/${ifName}`;
}

function connection(t: DockerApiTarget): object {
  return t.socketPath ? { socketPath: t.socketPath } : { host: t.host, port: t.port, protocol: 'http' };
}

function describeTarget(t: DockerApiTarget): string {
  return t.socketPath ? `unix://${t.socketPath}` : `tcp://${t.host}:${t.port}`;
}
