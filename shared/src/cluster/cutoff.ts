// A node cut off from the cluster store. The other nodes' endpoints keep their last known identities
// (as Cilium's agents keep theirs while the kvstore is unreachable): dropping them would cut every
// cross-node flow for as long as the store is out, and a node that cannot read the store cannot tell
// which of them changed meanwhile (changes are guarded where they are made: the release hold, the
// relabel egress hold, the operator's pod-CIDR quarantine). So the state is said loudly: a warn line
// here, `membrane status` (health/status.ts) and the membrane_kvstore_* metrics. In native routing
// --kvstore-max-stale bounds the trust: cut off that long, the remote endpoints leave the datapath
// (their packets count as world: fail closed, at the price of the cross-node flows) until the
// ipcache is listed again.
import type { PrefixMirror } from '../kvstore/mirror.ts';
import type { Session, SessionLog } from '../kvstore/session.ts';
import type { RoutingMode } from '../routing/plan.ts';
import type { ClusterIpcache } from './ipcache.ts';

export interface StoreCutoffOptions {
  session: Session;
  ipcache: ClusterIpcache;
  /** Listed again at once when the store answers (not after their back-off). */
  mirrors: PrefixMirror<unknown>[];
  routingMode: RoutingMode;
  /** 0: remote endpoints are kept however long the outage. */
  maxStaleMs: number;
  log: SessionLog;
}

export class StoreCutoff {
  /** When the store stopped answering (undefined: it answers). */
  private since?: number;
  private timer?: NodeJS.Timeout;

  constructor(private readonly o: StoreCutoffOptions) {
    o.session.onDisconnect((err) => this.cutOff(err));
    o.session.onReconnect(() => this.reconnected());
  }

  private cutOff(err: Error): void {
    this.since = Date.now();
    this.o.log.warn(
      { err: err.message, remoteEndpoints: this.o.ipcache.remoteEntries().size, routing: this.o.routingMode },
      "cut off from the cluster store: the other nodes' endpoints keep their last known identities until it answers (changes made meanwhile are not seen here)",
    );
    // Tunnel mode carries the sender's identity in each packet: its ipcache decides no identity.
    if (this.o.maxStaleMs <= 0 || this.o.routingMode !== 'native') return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      if (this.o.session.connected) return;
      const n = this.o.ipcache.withholdRemote();
      this.o.log.warn(
        { remoteEndpoints: n, maxStaleMs: this.o.maxStaleMs },
        "still cut off from the cluster store: the other nodes' endpoints leave the datapath (their packets count as world) until it answers (--kvstore-max-stale)",
      );
    }, this.o.maxStaleMs);
    this.timer.unref();
  }

  private reconnected(): void {
    const outageMs = this.since === undefined ? undefined : Date.now() - this.since;
    this.since = undefined;
    clearTimeout(this.timer);
    this.o.log.info({ outageMs }, "cluster store answers again: listing the other nodes' endpoints again");
    // Withheld remote endpoints come back with the ipcache's next list; a watch that never broke
    // missed nothing, so they come back now.
    if (this.o.ipcache.mirror.live) void this.o.ipcache.restoreRemote();
    for (const m of this.o.mirrors) if (!m.live) m.kick();
  }

  close(): void {
    clearTimeout(this.timer);
  }
}
