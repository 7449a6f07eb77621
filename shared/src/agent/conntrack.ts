// Conntrack upkeep in the agent: expired entries are collected every --conntrack-gc-interval seconds
// (the datapath treats them as absent already; collection frees room: the table never evicts), and
// every PRESSURE_INTERVAL_MS while the table is more than half full (read from the datapath's
// counters, no walk). A deleted endpoint's flows are flushed by the endpoint reaper
// (endpoint/reaper.ts). Each walk also sets the per-endpoint entry counts right (maps/conntrack.ts).
import type { Datapath } from '../bpf/datapath.ts';
import type { Logger } from '../log.ts';

/** Above this fill ratio the table is collected every PRESSURE_INTERVAL_MS. */
const PRESSURE_RATIO = 0.5;
const PRESSURE_INTERVAL_MS = 1000;

export interface ConntrackDeps {
  datapath: Pick<Datapath, 'gcConntrack' | 'conntrackFill'>;
  log: Logger;
  intervalSeconds: number;
}

export class ConntrackUpkeep {
  private timer?: NodeJS.Timeout;

  constructor(private readonly d: ConntrackDeps) {}

  private last = 0;

  start(): void {
    const interval = this.d.intervalSeconds * 1000;
    this.collect(); // at once: also sets the counts right after a restart or a resize
    this.timer = setInterval(
      () => {
        const since = performance.now() - this.last;
        if (since >= interval || (since >= PRESSURE_INTERVAL_MS && this.underPressure())) this.collect();
      },
      Math.min(interval, PRESSURE_INTERVAL_MS),
    );
    this.timer.unref();
  }

  private underPressure(): boolean {
    try {
      const f = this.d.datapath.conntrackFill();
      return f.max > 0 && f.entries / f.max > PRESSURE_RATIO;
    } catch {
      return false; // the datapath is closing
    }
  }

  /** One collection; returns the number of entries removed (0 when the walk failed, logged). */
  collect(): number {
    this.last = performance.now();
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
