// Conntrack upkeep in the agent: expired entries are collected every --conntrack-gc-interval seconds
// (the datapath treats them as absent already; collection frees room), and a deleted endpoint's
// flows are flushed at once, since its addresses may be handed out again.
import type { Datapath } from '../bpf/datapath.ts';
import type { EndpointHooks } from '../endpoint/manager.ts';
import type { Logger } from '../log.ts';
import { addressOnly } from '../net/index.ts';

export interface ConntrackDeps {
  datapath: Pick<Datapath, 'gcConntrack' | 'flushConntrack'>;
  log: Logger;
  intervalSeconds: number;
}

export class ConntrackUpkeep {
  private timer?: NodeJS.Timeout;

  constructor(private readonly d: ConntrackDeps) {}

  /** No flow of a deleted endpoint may carry over to the next owner of its addresses. */
  readonly hooks: EndpointHooks = {
    afterDelete: (ep) => {
      try {
        this.d.datapath.flushConntrack(ep.ips.map((ip) => addressOnly(ip.address)));
      } catch (err) {
        this.d.log.warn({ err, endpoint: `${ep.containerId}/${ep.ifName}` }, 'conntrack flush failed');
      }
    },
  };

  start(): void {
    this.timer = setInterval(() => this.collect(), this.d.intervalSeconds * 1000);
    this.timer.unref();
  }

  /** One collection; returns the number of entries removed (0 when the walk failed, logged). */
  collect(): number {
    try {
      return this.d.datapath.gcConntrack();
    } catch (err) {
      this.d.log.warn({ err }, 'conntrack GC failed');
      return 0;
    }
  }

  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }
}
