// The DNS proxy: the datapath diverts DNS from endpoints whose egress entry carries the DNS proxy's
// port (toPorts[].rules.dns) to its sockets on 127.0.0.1/::1, UDP and TCP (bpf/lib/proxy.h). For each
// query it asks the policy (decide), answers REFUSED itself when the name is not allowed, else relays
// it to the server the client asked (udp.ts, tcp.ts) and passes the answer on only once its addresses
// are in the datapath (learn): the first connection to an answered address is never dropped.
//
// Runs in the agent process, not in the HTTP proxy's worker processes: every answer needs the agent's
// ipcache write before it may be released, a DNS exchange lasts milliseconds (an agent restart cuts
// nothing a client does not retry), and with the agent down the datapath finds no socket and drops DNS
// from the selected endpoints (fail closed). UDP is relayed on the agent's thread, or with
// `workers` on worker threads that ask the agent's thread only what they have not seen (workers.ts).
import dgram from 'node:dgram';
import net from 'node:net';
import { SocketError, transparentListener, transparentUdpSocket } from '../l7/proxy/sockets.ts';
import { MessageReader } from './message.ts';
import { relayTcp } from './tcp.ts';
import { TcpClients } from './tcp-clients.ts';
import { newStats, type DnsProxyDeps, type DnsStats } from './types.ts';
import { UdpRelay } from './udp.ts';
import { DnsWorkers } from './workers.ts';

export type { DnsDecision, DnsProxyDeps, DnsRecord, Peer } from './types.ts';

export class DnsProxy {
  private readonly listeners: dgram.Socket[] = [];
  private readonly tcpServers: net.Server[] = [];
  private readonly tcpClients: TcpClients;
  private readonly reader = new MessageReader();
  private udp?: UdpRelay;
  private workers?: DnsWorkers;
  private readonly timeoutMs: number;
  private readonly ownStats = newStats();
  private workersWanted = false;

  constructor(private readonly d: DnsProxyDeps) {
    this.timeoutMs = d.upstreamTimeoutMs ?? 5000;
    this.tcpClients = new TcpClients(d.tcpLimits, d.log);
  }

  /** Listens on both loopback addresses (IPv6 when the node has it), UDP and TCP. */
  async start(): Promise<void> {
    const tcp = { d: this.d, reader: this.reader, stats: this.ownStats, timeoutMs: this.timeoutMs, clients: this.tcpClients };
    const udp = (this.udp = new UdpRelay(this.d, this.timeoutMs, this.ownStats));
    for (const ip of ['127.0.0.1', '::1']) {
      let fd: number;
      try {
        fd = transparentUdpSocket(ip, this.d.port, { reusePort: true });
      } catch (e) {
        if (ip === '::1' && e instanceof SocketError) continue;
        throw e;
      }
      const s = dgram.createSocket({ type: ip === '::1' ? 'udp6' : 'udp4', recvBufferSize: 4 << 20 });
      s.on('message', (msg, rinfo) => {
        if (this.workersWanted) this.startWorkers();
        udp.onDatagram(msg, { ip: rinfo.address, port: rinfo.port });
      });
      s.on('error', (err) => this.d.log.warn({ err }, 'DNS proxy socket error'));
      await new Promise<void>((resolve) => s.bind({ fd }, resolve));
      this.listeners.push(s);
      const tfd = transparentListener(ip === '::1' ? 6 : 4, this.d.port);
      const server = net.createServer({ allowHalfOpen: true }, (c) => relayTcp(c, tcp)); // tcp.ts ends our side
      server.on('error', (err) => this.d.log.warn({ err }, 'DNS proxy listener error'));
      server.listen({ fd: tfd });
      this.tcpServers.push(server);
    }
    this.workersWanted = !!this.d.workers?.count;
  }

  /** The policy maps changed: the worker threads' verdict caches go now (workers.ts). */
  generationChanged(): void {
    this.workers?.publishGeneration();
  }

  /** Workers start with the first diverted datagram (an agent whose policies have no DNS rules runs
   *  none) and take UDP over once they all listen: until then (a worker thread loads its code in
   *  milliseconds from the bundle, in seconds from source on a busy machine) the agent's thread relays,
   *  so neither readiness nor a query waits for them; if they cannot start, it goes on relaying.
   *  Datagrams queued on the agent's listeners when they close are lost (the clients ask again). */
  private startWorkers(): void {
    this.workersWanted = false;
    const o = this.d.workers;
    if (!o?.count) return;
    const workers = (this.workers = new DnsWorkers(this.d, o));
    workers.start().then(
      () => {
        if (this.workers !== workers) return; // closed meanwhile
        for (const s of this.listeners) s.close();
        this.listeners.length = 0;
        this.d.log.debug?.({ workers: o.count }, 'DNS proxy: UDP relayed by worker threads');
      },
      (err: unknown) => {
        this.d.log.warn({ err }, "DNS proxy workers did not start: UDP stays on the agent's thread");
        void workers.close();
        if (this.workers === workers) this.workers = undefined;
      },
    );
  }

  /** Worker threads relaying UDP now (0: the agent's thread does). */
  get udpWorkers(): number {
    return this.listeners.length ? 0 : (this.workers?.listening ?? 0);
  }

  get running(): boolean {
    return this.listeners.length > 0 || !!this.workers?.running;
  }

  /** For the agent's status: who relays UDP, the counters, and the TCP client connections open now
   *  and closed so far to stay within the limits (tcp-clients.ts). */
  status(): { udpWorkers: number; stats: DnsStats; tcpConnections: { open: number; evicted: number } } {
    return {
      udpWorkers: this.udpWorkers,
      stats: this.stats,
      tcpConnections: { open: this.tcpClients.size, evicted: this.tcpClients.evicted },
    };
  }

  /** Counters of the agent's thread and the workers'. */
  get stats(): DnsStats {
    const s = { ...this.ownStats };
    return this.workers ? this.workers.addStats(s) : s;
  }

  async close(): Promise<void> {
    this.udp?.close();
    const workers = this.workers;
    this.workers = undefined;
    await workers?.close();
    for (const s of this.listeners) s.close();
    this.listeners.length = 0;
    this.tcpClients.closeAll();
    await Promise.all(this.tcpServers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    this.tcpServers.length = 0;
  }
}
