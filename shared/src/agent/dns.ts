// DNS and toFQDNs in the agent: the DNS proxy (dns/proxy.ts) on a port kept in <stateDir>/dns, the
// name cache and FQDN identities (fqdn/state.ts) the policy engine puts in the ipcache, their upkeep
// (expired entries whose addresses no connection uses go; the state is saved to the store so a restart
// keeps what was learned), DNS flows and metrics, and /v1/fqdn. Its dependencies are its parameters;
// the composition root (agent.ts) decides the order: opened before the policy engine (its port goes
// into DNS entries, its state into the first sync), bound to the engine after it started.
import fs from 'node:fs';
import path from 'node:path';
import express from 'express';
import type { Logger } from '../log.ts';
import type { AgentConfig } from './config.ts';
import type { Netlink } from '../netlink/index.ts';
import type { Store } from '../store/index.ts';
import type { Datapath } from '../bpf/datapath.ts';
import * as conntrack from '../maps/conntrack.ts';
import { datapathOps } from '../policy/datapath-ops.ts';
import type { PolicyEngine } from '../policy/engine.ts';
import { identityKind } from '../identity/reserved.ts';
import { FqdnState, type FqdnPersisted } from '../fqdn/state.ts';
import { dnsRuleMatches } from '../fqdn/selector.ts';
import { WritesInFlight } from '../fqdn/writes.ts';
import { pickProxyPort, portFree } from '../l7/proxy/sockets.ts';
import { udpPortFree } from '../dns/udp-port.ts';
import { normalizeIp } from '../net/index.ts';
import { DnsProxy, type DnsDecision, type DnsRecord, type Peer } from '../dns/proxy.ts';
import { DnsAnswerCache } from '../dns/answer-cache.ts';
import { readAnswer, readQuery } from '../dns/message.ts';
import { dnsRecord } from '../dns/types.ts';
import { decodeTraceEvent } from '../flows/event.ts';
import { possibleCpus } from '../bpf/datapath.ts';
import type { Answer, Query } from '../dns/message.ts';
import { dnsFlow } from '../dns/flows.ts';
import { originalDestination } from '../dns/original-destination.ts';
import { registerDnsMetrics } from '../dns/metrics.ts';
import type { AgentFlows } from './flows.ts';

const STORE_KEY = 'fqdn/state';
const GC_INTERVAL_MS = 5_000;
const SAVE_DELAY_MS = 1_000;
/** An expired entry stays this long past its TTL before upkeep may remove it (a client that got a
 *  TTL-0 answer connects right after it). */
const EXPIRY_GRACE_MS = 5_000;
/** Addresses found in the pinned ipcache after a restart but learned after the last save. */
const RESTORE_GRACE_MS = 10 * 60_000;
const PROTO = { udp: 17, tcp: 6 } as const;
const MAX_CACHED_DECISIONS = 10_000;
/** DNS_CACHE_ENTRIES in bpf/lib/dns_cache.h. */
const MAX_CACHED_ENTRIES = 8192;

/** One object shape for every decision (the proxy's hot path stays monomorphic). */
function decision(
  allowed: boolean,
  endpoint: number | undefined,
  identity: number,
  peerIdentity: number,
  ruleId: number,
  rulePath?: string,
): DnsDecision {
  return { allowed, endpoint, identity, peerIdentity, ruleId, rulePath, cacheGeneration: undefined };
}

export interface DnsDeps {
  cfg: AgentConfig;
  log: Logger;
  host: Netlink;
  datapath: Datapath;
  store: Store;
  ipv6: boolean;
}

/** One name cache entry as `membrane fqdn cache list` shows it. */
export interface FqdnCacheEntryView {
  name: string;
  ip: string;
  ttl: number;
  expiresAt: string;
  identity?: number;
  endpoints: number[];
}

export class AgentDns {
  private engine?: PolicyEngine;
  private proxy?: DnsProxy;
  private answers?: DnsAnswerCache;
  /** Entry id -> what it answers (bounded like the datapath's map). */
  private readonly cached = new Map<number, { server: Peer; decision: DnsDecision; query: Query; answer: Answer }>();
  private timers: NodeJS.Timeout[] = [];
  private saveTimer?: NodeJS.Timeout;
  private saving: Promise<void> = Promise.resolve();
  private queuedSave?: Promise<void>;
  private readonly listeners: ((r: DnsRecord) => void)[] = [];
  private readonly decisions = new Map<string, DnsDecision>();
  private readonly writes = new WritesInFlight();
  private decisionsGen = -1;

  private constructor(
    private readonly d: DnsDeps,
    readonly port: number,
    readonly state: FqdnState,
    private readonly log: Logger,
  ) {}

  /** undefined with --dns-proxy off. */
  static async open(d: DnsDeps): Promise<AgentDns | undefined> {
    if (!d.cfg.dnsProxy) return undefined;
    const log = d.log.child({ component: 'dns' });
    // The routing rule comes with the first policy that needs the proxy (l7/activation.ts).
    const port = choosePort(d.cfg);
    const state = new FqdnState(d.cfg.fqdnMinTtl);
    const saved = await d.store.get<FqdnPersisted>(STORE_KEY);
    const restored = state.restore(
      saved,
      datapathOps(d.datapath).readIpcache(),
      (id) => identityKind(id) === 'fqdn',
      Date.now(),
      RESTORE_GRACE_MS,
    );
    log.info({ port, ...restored }, 'DNS proxy port chosen; name cache restored');
    return new AgentDns(d, port, state, log);
  }

  proxyPorts = (): { dns: number } => ({ dns: this.port });

  /** After the engine's first sync: the proxy listens (until then the datapath drops diverted DNS). */
  async bind(engine: PolicyEngine): Promise<void> {
    this.engine = engine;
    const fd = this.d.datapath.mapFd('proxy_udp_dst');
    const answers = (this.answers = new DnsAnswerCache(
      {
        cache: this.d.datapath.mapFd('dns_answers'),
        config: this.d.datapath.mapFd('dns_cache_config'),
        hits: this.d.datapath.mapFd('dns_cache_hits'),
      },
      this.d.cfg.dnsCache,
      possibleCpus(),
    ));
    this.proxy = new DnsProxy({
      port: this.port,
      log: this.log,
      tcpLimits: this.d.cfg.dnsProxyTcp,
      decide: (src, dst, proto, q) => this.decide(src, dst, proto, q),
      learn: (endpoint, answer) => this.learn(endpoint, answer),
      record: (r) => {
        for (const l of this.listeners) l(r);
      },
      originalDestination: (src) => originalDestination(fd, src),
      ...(answers.enabled
        ? {
            cacheAnswer: (client, server, dec, query, answer, arrivedNs) => {
              if (dec.endpoint === undefined || dec.cacheGeneration === undefined) return;
              try {
                const id = answers.store(dec.endpoint, server, query, answer, dec.cacheGeneration, arrivedNs);
                if (id) this.rememberCached(id, server, dec, query, answer);
              } catch (err) {
                this.log.warn({ err, client }, 'cannot cache a DNS answer in the datapath');
              }
            },
          }
        : {}),
      workers: this.d.cfg.dnsProxyWorkers
        ? {
            count: this.d.cfg.dnsProxyWorkers,
            mapFd: fd,
            generation: () => this.engine?.mapsGeneration ?? -1,
            keptUntil: (answer, now) => now + Math.max(this.d.cfg.fqdnMinTtl, Math.min(...answer.ips.map((x) => x.ttl))) * 1000,
          }
        : undefined,
    });
    await this.proxy.start();
    this.timers.push(
      setInterval(() => {
        this.expire().catch((err) => this.log.warn({ err }, 'FQDN upkeep failed'));
      }, GC_INTERVAL_MS),
    );
    for (const t of this.timers) t.unref();
    this.log.info({ port: this.port, workers: this.d.cfg.dnsProxyWorkers }, 'DNS proxy listening');
  }

  /** The policy's verdict on a query, the same for every query of one sender, server and name until
   *  the maps change (the engine's generation): a client asking the same name again and again pays
   *  one lookup. Bounded: names are the client's to choose. */
  decide(src: Peer, dst: Peer, proto: 'udp' | 'tcp', q: Query): DnsDecision {
    const gen = this.engine?.mapsGeneration ?? -1;
    if (gen !== this.decisionsGen || this.decisions.size >= MAX_CACHED_DECISIONS) {
      this.decisions.clear();
      this.decisionsGen = gen;
    }
    const key = `${src.ip}|${dst.ip}|${dst.port}|${proto}|${q.name}`;
    let d = this.decisions.get(key);
    if (!d) {
      d = this.lookupDecision(src, dst, proto, q);
      d.cacheGeneration = this.answers?.generation;
      this.decisions.set(key, d);
    }
    return d;
  }

  /** What a cached entry answers, for the flows of the queries the datapath answers with it. */
  private rememberCached(id: number, server: Peer, decision: DnsDecision, query: Buffer, answer: Buffer): void {
    const q = readQuery(query);
    const a = readAnswer(answer);
    if (!q || !a) return;
    this.cached.set(id, { server, decision, query: q, answer: a });
    if (this.cached.size > MAX_CACHED_ENTRIES) this.cached.delete(this.cached.keys().next().value as number);
  }

  /** A query the datapath answered (a DNS_CACHED event): the query and answer records the proxy
   *  would have made, marked as answered from the cache. */
  private cachedAnswerSeen(data: Buffer, offset: number): void {
    const e = decodeTraceEvent(data, offset);
    const c = this.cached.get(e.ruleId);
    if (!c) return;
    const client = { ip: e.saddr, port: e.sport };
    const query = { ...c.query, id: 0 };
    this.emit(dnsRecord('query', 'udp', client, c.server, query, c.decision, 'forwarded', 'cached'));
    this.emit(dnsRecord('response', 'udp', client, c.server, query, c.decision, 'forwarded', 'cached', c.answer, 0));
  }

  private emit(r: DnsRecord): void {
    for (const l of this.listeners) l(r);
  }

  /** The policy maps or the ipcache changed: the workers' cached verdicts and the answers cached in the
   *  datapath under earlier verdicts go. */
  policyChanged(): void {
    this.proxy?.generationChanged();
    try {
      this.answers?.bump();
    } catch (err) {
      this.log.error({ err }, 'cannot invalidate the DNS answer cache');
    }
  }

  /** The sender's egress entry towards the server, then its DNS rules. */
  private lookupDecision(src: Peer, dst: Peer, proto: 'udp' | 'tcp', q: Query): DnsDecision {
    const e = this.engine?.egressEntry(normalizeIp(src.ip), normalizeIp(dst.ip), PROTO[proto], dst.port);
    if (!e) return decision(false, undefined, 0, 0, 0);
    const verdict = (allowed: boolean, ruleId: number, rulePath?: string) =>
      decision(allowed, e.endpoint, e.identity, e.peer, ruleId, rulePath);
    if (!e.lookup) return verdict(true, 0);
    const entry = e.entry;
    if (entry?.l7?.kind === 'dns') {
      const hit = entry.l7.dns?.find((r) => dnsRuleMatches(r.dns, q.name));
      return hit ? verdict(true, hit.ruleId, hit.path) : verdict(false, entry.ruleId);
    }
    if (entry) return verdict(entry.action === 'allow' && !entry.l7, entry.ruleId);
    return verdict(!e.defaultDeny, 0);
  }

  /** An answer's names and addresses, in the datapath (and, when new, in the store) before the
   *  returned promise resolves: a restart right after the client got the answer still knows them.
   *  undefined when nothing is left to wait for: an answer that teaches nothing new (the common case:
   *  a TTL refresh, saved later) goes to the client at once, unless an earlier answer's writes are
   *  still under way (they may carry this answer's addresses: it waits for them too). */
  learn(endpoint: number, answer: Answer): Promise<void> | undefined {
    const r = this.state.learn(endpoint, answer.names, answer.ips, Date.now());
    if (!r.changed.length && !r.newIdentity && !r.newEntries) {
      this.saveSoon();
      return this.writes.settled();
    }
    return this.writes.track(this.write(r.changed, r.newIdentity));
  }

  private async write(changed: string[], newIdentity: boolean): Promise<void> {
    if (changed.length || newIdentity) await this.engine?.fqdnChanged(changed, newIdentity);
    await this.save();
  }

  /** Expired entries whose addresses no tracked connection uses go (and their ipcache entries). */
  private async expire(): Promise<void> {
    const now = Date.now();
    if (!this.state.cache.expired(now - EXPIRY_GRACE_MS).length) return;
    const inUse = new Set<string>();
    for (const e of conntrack.list(this.d.datapath.mapFd('conntrack'), process.hrtime.bigint())) {
      inUse.add(e.daddr);
      inUse.add(e.saddr);
    }
    const r = this.state.expire(now - EXPIRY_GRACE_MS, (ip) => inUse.has(ip));
    if (r.changed.length) await this.engine?.fqdnChanged(r.changed, false);
    if (r.removed) {
      this.log.debug({ removed: r.removed, changed: r.changed.length }, 'FQDN entries expired');
      this.saveSoon();
    }
  }

  private saveSoon(): void {
    if (this.saveTimer) return;
    this.saveTimer = setTimeout(() => {
      this.saveTimer = undefined;
      void this.save();
    }, SAVE_DELAY_MS);
    this.saveTimer.unref();
  }

  /** One save at a time; callers while one is queued share the next (it snapshots when it starts). */
  private save(): Promise<void> {
    if (this.queuedSave) return this.queuedSave;
    const next = this.saving
      .then(() => {
        this.queuedSave = undefined;
        return this.d.store.put(STORE_KEY, this.state.persisted());
      })
      .catch((err) => {
        this.log.warn({ err }, 'cannot save the FQDN state');
      });
    this.queuedSave = next;
    this.saving = next;
    return next;
  }

  onRecords(fn: (r: DnsRecord) => void): void {
    this.listeners.push(fn);
  }

  /** Queries and responses become L7 flows in the observer and count in the DNS metrics. */
  attachFlows(flows: AgentFlows): void {
    const metrics = flows.registry ? registerDnsMetrics(flows.registry, () => this.state.cache.size) : undefined;
    const build = (r: unknown) => dnsFlow(r as DnsRecord, flows.context);
    this.onRecords((r) => {
      flows.pushLazy(r, r.timeMs, build);
      metrics?.observe(r);
    });
    flows.onDnsCached((data, offset) => this.cachedAnswerSeen(data, offset));
  }

  cacheList(): FqdnCacheEntryView[] {
    return this.state.cache
      .entries()
      .map((e) => {
        const prefix = e.ip.includes(':') ? `${e.ip}/128` : `${e.ip}/32`;
        const identity = this.state.entryOf(prefix);
        return {
          name: e.name,
          ip: e.ip,
          ttl: e.ttl,
          expiresAt: new Date(e.expiresAt).toISOString(),
          ...(identity !== undefined ? { identity } : {}),
          endpoints: [...e.endpoints.keys()].sort((a, b) => a - b),
        };
      })
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.ip < b.ip ? -1 : 1));
  }

  router(): express.Router {
    const r = express.Router();
    r.get('/cache', (req, res) => {
      const name = typeof req.query.name === 'string' ? req.query.name.toLowerCase().replace(/\.?$/, '.') : undefined;
      const endpoint = typeof req.query.endpoint === 'string' ? Number(req.query.endpoint) : undefined;
      res.json(
        this.cacheList().filter((e) => (!name || e.name === name) && (endpoint === undefined || e.endpoints.includes(endpoint))),
      );
    });
    return r;
  }

  status(): Record<string, unknown> {
    return {
      port: this.port,
      running: !!this.proxy?.running,
      ...this.state.cache.size,
      identities: this.state.identities.list().length,
      ...this.proxy?.status(),
      ...(this.answers ? { cache: { enabled: this.answers.enabled, hits: this.answers.hits() } } : {}),
    };
  }

  async close(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    if (this.saveTimer) {
      clearTimeout(this.saveTimer);
      this.saveTimer = undefined;
    }
    await this.proxy?.close();
    await this.save();
  }
}

/** The kept port (UDP and TCP free on loopback), unless --dns-proxy-port names one. */
function choosePort(cfg: AgentConfig): number {
  const dir = path.join(cfg.stateDir, 'dns');
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const file = path.join(dir, 'port');
  const free = (p: number) => portFree(p) && udpPortFree(p);
  if (cfg.dnsProxyPort) {
    fs.writeFileSync(file, `${cfg.dnsProxyPort}\n`);
    return cfg.dnsProxyPort;
  }
  const kept = Number(fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim() : 0);
  if (kept && free(kept)) return kept;
  const port = pickProxyPort(free);
  fs.writeFileSync(file, `${port}\n`);
  return port;
}
