// The DNS proxy's vocabulary, shared by its UDP and TCP relays, the agent, flows and metrics: who
// talks to whom (Peer), the policy's verdict on a query (DnsDecision), what a query or response looked
// like (DnsRecord), and what the proxy needs from the agent (DnsProxyDeps). Pure.
import type { Answer, Query } from './message.ts';
import type { TcpClientLimits } from './tcp-clients.ts';

export interface Peer {
  ip: string;
  port: number;
}

export interface DnsDecision {
  allowed: boolean;
  /** The sending endpoint (undefined: not an endpoint of this node). */
  endpoint?: number | undefined;
  identity: number;
  peerIdentity: number;
  /** The policy rule behind the verdict (0: none, e.g. default deny). */
  ruleId: number;
  /** The DNS rule that allowed the name ("spec.egress[0].toPorts[0].rules.dns[1]"). */
  rulePath?: string | undefined;
  /** The datapath answer cache's generation when decided (answer-cache.ts): an answer is cached only
   *  under the generation its verdict was made in. */
  cacheGeneration?: number | undefined;
}

/** One query or response as flows and metrics see it. */
export interface DnsRecord {
  kind: 'query' | 'response';
  timeMs: number;
  proto: 'udp' | 'tcp';
  src: Peer;
  dst: Peer;
  query: Query;
  decision: DnsDecision;
  verdict: 'forwarded' | 'refused' | 'error';
  /** Why the proxy answered itself: refused by policy, upstream timeout, malformed. */
  reason?: string | undefined;
  answer?: Answer | undefined;
  latencyNs?: number | undefined;
  /** Time from the answer's arrival to the datapath holding its addresses. */
  learnNs?: number | undefined;
}

/** Every record in one object shape (the proxy's hot path stays monomorphic). */
export function dnsRecord(
  kind: DnsRecord['kind'],
  proto: DnsRecord['proto'],
  src: Peer,
  dst: Peer,
  query: Query,
  decision: DnsDecision,
  verdict: DnsRecord['verdict'],
  reason?: string,
  answer?: Answer,
  latencyNs?: number,
  learnNs?: number,
): DnsRecord {
  return { kind, timeMs: Date.now(), proto, src, dst, query, decision, verdict, reason, answer, latencyNs, learnNs };
}

export interface DnsProxyDeps {
  port: number;
  decide(src: Peer, dst: Peer, proto: 'udp' | 'tcp', query: Query): DnsDecision;
  /** Resolves once the answer's addresses are in the datapath; undefined: they already are. */
  learn(endpoint: number, answer: Answer): Promise<void> | undefined;
  record(r: DnsRecord): void;
  /** A UDP answer just relayed to `client` (its addresses in the datapath), for the datapath's answer
   *  cache (answer-cache.ts); absent: nothing is cached. */
  cacheAnswer?(client: Peer, server: Peer, decision: DnsDecision, query: Buffer, answer: Buffer, arrivedNs: bigint): void;
  /** Where a diverted datagram from `src` was going (the datapath's proxy_udp_dst). */
  originalDestination(src: Peer): Peer | undefined;
  log: { warn(o: object, msg: string): void; debug?(o: object, msg: string): void };
  upstreamTimeoutMs?: number;
  /** Bounds on TCP client connections (default tcp-clients.ts's TCP_CLIENT_LIMITS). */
  tcpLimits?: Partial<TcpClientLimits> | undefined;
  /** UDP relayed on worker threads (workers.ts) instead of the agent's thread. */
  workers?: DnsWorkersOptions | undefined;
}

export interface DnsWorkersOptions {
  count: number;
  /** The proxy_udp_dst map's fd (fds belong to the process: valid in every thread). */
  mapFd: number;
  /** Changes whenever a verdict may change (the policy maps' generation). */
  generation(): number;
  /** How long the agent keeps an answer's addresses at least once learned (its TTL or the minimum). */
  keptUntil(answer: Answer, now: number): number;
}

/** Counters the relays share (agent status). */
export interface DnsStats {
  queries: number;
  refused: number;
  forwarded: number;
  errors: number;
  ignored: number;
}

export const newStats = (): DnsStats => ({ queries: 0, refused: 0, forwarded: 0, errors: 0, ignored: 0 });

export const loopback = (ip: string): boolean => ip === '127.0.0.1' || ip === '::1' || ip.startsWith('127.');
