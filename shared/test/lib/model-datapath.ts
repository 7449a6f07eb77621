// The packet fuzzer's model of the datapath's decisions: conntrack bound to endpoints with TCP state,
// related ICMP, revocation and per-endpoint shares (bpf/lib/ct.h), NDP/MLD (enforce.h), policy
// (policy/verdict.ts, the same probe order as lookup.h), and the two programs (endpoint.c). Written
// from the C's rules, held against the real program by shared/test/bpf-fuzz.test.ts. Time is left
// out: a fuzz episode is far shorter than the shortest conntrack lifetime (10 s).
import type { Entry } from '../../src/policy/compile.ts';
import { policyVerdict } from '../../src/policy/verdict.ts';
import {
  addrOf,
  checkSource,
  linkScoped,
  parse,
  R,
  sourceOnLink,
  type Addr,
  type FragValue,
  type ModelEndpoint,
  type Pkt,
} from './model-parse.ts';

export const OK = 0,
  SHOT = 2,
  REDIRECT = 7;
const INGRESS = 0,
  EGRESS = 1,
  LOCAL = 2;
const SYN = 0x02,
  ACK = 0x10,
  FIN = 0x01,
  RST = 0x04;
const ST = { NEW: 0, EST: 1, CLOSING: 2, CLOSED: 3 } as const;

interface CtEntry {
  owner: number;
  peer: number;
  state: number;
  isn: number;
  seen: [number, number];
  /** The sequence number of the first FIN's segment, and which direction's FIN is acknowledged. */
  finSeq: number;
  finAcked: [boolean, boolean];
  revoked: boolean;
  /** Admitted by audit mode (CT_F_AUDIT): revalidation only ever revokes it. */
  audit: boolean;
  proto: number;
  port: number;
}

export interface Outcome {
  verdict: number;
  reason?: number;
}

export class DatapathModel {
  readonly endpoints = new Map<number, ModelEndpoint>(); // by host ifindex
  /** local_endpoints: family/addr -> host ifindex and endpoint id. */
  readonly locals = new Map<string, { ifindex: number; id: number }>();
  /** ipcache prefixes: [family, addr hex, bits, identity]. */
  ipcache: [number, Addr, number, number][] = [];
  policy = new Map<string, Entry>();
  globalAudit = false;
  share = 0;
  capacity: number;
  readonly ct = new Map<string, CtEntry>();
  /** ct_server_ports: never cleared by reset(), as the kernel's map is not between episodes. */
  readonly serverPorts = new Set<number>();
  readonly owned = new Map<number, number>();
  readonly frags = new Map<string, FragValue>();

  constructor(capacity: number) {
    this.capacity = capacity;
  }

  reset(): void {
    this.ct.clear();
    this.owned.clear();
    this.frags.clear();
  }

  private count(owner: number, d: number): void {
    this.owned.set(owner, (this.owned.get(owner) ?? 0) + d);
  }

  identityOf(family: number, a: Addr): number {
    let best = -1,
      id = 2; // world
    const bits = BigInt(`0x${a}`);
    for (const [f, pfx, len, ident] of this.ipcache) {
      if (f !== family || len <= best) continue;
      const mask = len === 0 ? 0n : ((1n << BigInt(len)) - 1n) << BigInt(128 - len);
      if ((bits & mask) === (BigInt(`0x${pfx}`) & mask)) {
        best = len;
        id = ident;
      }
    }
    return id;
  }

  private byId(id: number): ModelEndpoint | undefined {
    for (const e of this.endpoints.values()) if (e.id === id) return e;
    return undefined;
  }

  private key(family: number, proto: number, scope: number, sport: number, dport: number, s: Addr, d: Addr): string {
    return `${family}/${proto}/${scope}/${sport}/${dport}/${s}/${d}`;
  }

  private update(e: CtEntry, p: Pkt, dir: 0 | 1): boolean {
    const other = e.seen[dir ^ 1];
    const finBefore = ((e.seen[dir] | other) & FIN) !== 0;
    e.seen[dir] |= p.tcpFlags;
    if (p.proto !== 6) return false;
    if (p.tcpFlags & RST) {
      e.state = ST.CLOSED;
      return true;
    }
    // The FINs' acknowledgments (bpf/lib/ct.h ct_update): done once both FINs are acknowledged.
    if (p.tcpFlags & FIN) {
      if (!finBefore) e.finSeq = p.seq;
      else if (other & FIN && p.tcpFlags & ACK && ((p.ack - e.finSeq) | 0) > 0) e.finAcked[dir ^ 1] = true;
    } else if (other & FIN && p.tcpFlags & ACK) e.finAcked[dir ^ 1] = true;
    if (p.tcpFlags & FIN && e.state < ST.CLOSING) e.state = ST.CLOSING;
    else if (dir === 1 && e.state === ST.NEW && p.tcpFlags & ACK) e.state = ST.EST;
    return e.finAcked[0] && e.finAcked[1];
  }

  private related(f: Buffer, p: Pkt, scope: number, self: number, peer: number): boolean {
    if (p.later) return false;
    const off = p.l4Off + 8;
    let proto: number, s: Addr, d: Addr, l4: number;
    if (p.family === 4) {
      if (off + 20 > f.length) return false;
      proto = f[off + 9];
      s = addrOf(f, off + 12, 4);
      d = addrOf(f, off + 16, 4);
      l4 = off + (f[off] & 0xf) * 4;
    } else {
      if (off + 40 > f.length) return false;
      proto = f[off + 6];
      s = addrOf(f, off + 8, 16);
      d = addrOf(f, off + 24, 16);
      l4 = off + 40;
    }
    if (s !== p.daddr || (scope !== INGRESS && d !== p.saddr) || l4 + 8 > f.length) return false;
    const icmp = proto === 1 || proto === 58;
    const sp = icmp ? f.readUInt16BE(l4 + 4) : f.readUInt16BE(l4),
      dp = icmp ? f.readUInt16BE(l4 + 4) : f.readUInt16BE(l4 + 2);
    const live = (e: CtEntry | undefined, owner: number, pr: number) => !!e && e.owner === owner && e.peer === pr && !e.revoked;
    const local = scope === LOCAL;
    if (
      live(this.ct.get(this.key(p.family, proto, local ? LOCAL : scope ^ 1, sp, dp, s, d)), local ? peer : self, local ? self : 0)
    )
      return true;
    return live(this.ct.get(this.key(p.family, proto, scope, dp, sp, d, s)), self, peer);
  }

  /** ct_lookup: [result, key of the entry found]. */
  private lookup(
    f: Buffer,
    p: Pkt,
    scope: number,
    self: number,
    peer: number,
  ): ['new' | 'est' | 'reply' | 'related' | 'rfwd' | 'rrep', string?, CtEntry?] {
    const syn = p.proto === 6 && p.hasL4 && (p.tcpFlags & (SYN | ACK)) === SYN;
    const rk = this.key(p.family, p.proto, scope === LOCAL ? LOCAL : scope ^ 1, p.dport, p.sport, p.daddr, p.saddr);
    const mine = (x: CtEntry | undefined): x is CtEntry =>
      !!x && x.owner === (scope === LOCAL ? peer : self) && x.peer === (scope === LOCAL ? self : 0);
    // ct_lookup's reply-first probe (ct_reply_likely: a SYN-ACK, or a TCP/UDP source port below the
    // destination port) takes a live, unrevoked reverse entry that is not closing before the forward
    // key is asked. It is not only an order: when one endpoint's closing flow and the other endpoint's
    // newer flow on the reversed tuple both exist (the second opened by a SYN while the first was
    // closing), such a packet is the newer flow's reply, not the old flow's straggler. Modelled as the
    // kernel does it since FUZZ_SEED=248404394: forward-first here updated (and on a RST deleted) the
    // old flow's entry where the program deleted the newer one, and each endpoint's share then held
    // the other's slot (INSERT_FAILED predicted for the wrong endpoint). Each entry stays charged to
    // the endpoint that opened it and was admitted by policy at this point: nothing passes unasked.
    if (this.replyLikely(p)) {
      const r = this.ct.get(rk);
      if (mine(r) && !r.revoked && r.state < ST.CLOSING) return ['reply', rk, r];
    }
    const fk = this.key(p.family, p.proto, scope, p.sport, p.dport, p.saddr, p.daddr);
    const e = this.ct.get(fk);
    if (e && e.owner === self && e.peer === peer && !(syn && (e.state !== ST.NEW || e.isn !== p.seq))) {
      // A revoked forward entry yields to the reply the probe takes, whatever replyLikely said.
      const back = e.revoked ? this.ct.get(rk) : undefined;
      if (e.revoked) return mine(back) && !back.revoked && back.state < ST.CLOSING ? ['reply', rk, back] : ['rfwd', fk, e];
      return ['est', fk, e];
    }
    const r = this.ct.get(rk);
    if (mine(r) && !(syn && r.state >= ST.CLOSING)) {
      if (r.revoked) return ['rrep', rk, r];
      return ['reply', rk, r];
    }
    if (p.icmpError && this.related(f, p, scope, self, peer)) return ['related'];
    return ['new'];
  }

  /** ct_reply_likely. */
  private replyLikely(p: Pkt): boolean {
    if (!p.hasL4) return false;
    if (p.proto === 6) {
      if ((p.tcpFlags & (SYN | ACK)) === (SYN | ACK)) return true;
      if (p.tcpFlags & SYN) return false;
    } else if (p.proto !== 17) return false;
    const s = this.serverPorts.has(p.sport);
    if (s !== this.serverPorts.has(p.dport)) return s;
    return p.sport < p.dport;
  }

  private port(p: Pkt): number {
    if (!p.hasL4) return 0;
    return p.proto === 1 || p.proto === 58 ? 0x100 | p.icmpType : p.dport;
  }

  /** The policy's answer for a new flow: [passes, admitted only by audit mode]. */
  private decide(p: Pkt, ep: ModelEndpoint, dir: number, peer: number): [boolean, boolean] {
    const v = policyVerdict(
      { policy: this.policy },
      {
        endpointId: ep.id,
        flags: ep.flags & 0x1f,
        direction: dir === INGRESS ? 'ingress' : 'egress',
        peer,
        proto: p.proto,
        port: this.port(p),
        globalAudit: this.globalAudit,
      },
    );
    return [v.pass, v.audit];
  }

  private create(p: Pkt, scope: number, ep: ModelEndpoint, audit: boolean, peerEp?: ModelEndpoint): boolean {
    const owner = ep.id;
    const k = this.key(p.family, p.proto, scope, p.sport, p.dport, p.saddr, p.daddr);
    const old = this.ct.get(k);
    // ct_create: replacing the owner's own entry costs no share; a bare TCP segment (or RST) of no
    // known flow passes untracked.
    if (!old && p.proto === 6 && p.hasL4 && !p.later && !(p.tcpFlags & SYN) && (p.tcpBare || p.tcpFlags & RST)) return true;
    if ((!old || old.owner !== owner) && this.share && (this.owned.get(owner) ?? 0) >= this.share) return false;
    if (!old && this.ct.size >= this.capacity) return false;
    let state: number = ST.EST;
    const syn = p.proto === 6 && p.hasL4 && (p.tcpFlags & (SYN | ACK)) === SYN;
    if (syn) state = ST.NEW;
    else if (p.proto === 6 && !(p.tcpFlags & (RST | FIN))) state = ST.NEW;
    else if (p.proto === 6 && p.tcpFlags & RST) state = ST.CLOSED;
    else if (p.proto === 6 && p.tcpFlags & FIN) state = ST.CLOSING;
    this.ct.set(k, {
      owner,
      peer: peerEp?.id ?? 0,
      state,
      isn: syn ? p.seq : 0,
      seen: [p.tcpFlags, 0],
      finSeq: state === ST.CLOSING ? p.seq : 0, // ct_create: a flow picked up at its FIN
      finAcked: [false, false],
      revoked: false,
      audit,
      proto: p.proto,
      port: this.port(p),
    });
    // ct_mark_server_port: a TCP SYN's or UDP datagram's destination port, once it made an entry.
    if (p.hasL4 && (syn || p.proto === 17)) this.serverPorts.add(p.dport);
    if (!old) this.count(owner, 1);
    else if (old.owner !== owner) {
      this.count(old.owner, -1);
      this.count(owner, 1);
    }
    return true;
  }

  private ndp(p: Pkt): boolean {
    return p.family === 6 && p.proto === 58 && p.hasL4 && !p.later && p.icmpType >= 133 && p.icmpType <= 137;
  }
  private mld(p: Pkt): boolean {
    return (
      p.family === 6 && p.proto === 58 && p.hasL4 && !p.later && ((p.icmpType >= 130 && p.icmpType <= 132) || p.icmpType === 143)
    );
  }

  private onLink(p: Pkt, ep: ModelEndpoint, dir: number): boolean {
    const ndp = this.ndp(p);
    if (dir === INGRESS) return ndp ? p.hopLimit === 255 : sourceOnLink(p.saddr);
    if (ndp)
      return p.icmpType !== 134 && p.icmpType !== 137 && p.hopLimit === 255 && (linkScoped(p.daddr) || p.daddr === ep.gateway6);
    return sourceOnLink(p.saddr) && linkScoped(p.daddr);
  }

  /** The TCP bookkeeping of an established or reply packet: a finished connection's entry goes. */
  private touch(p: Pkt, key: string, e: CtEntry, dir: 0 | 1): void {
    if (this.update(e, p, dir)) {
      this.ct.delete(key);
      this.count(e.owner, -1);
    }
  }

  private enforce(f: Buffer, p: Pkt, ep: ModelEndpoint, dir: number): Outcome {
    if (this.ndp(p) || this.mld(p))
      return this.onLink(p, ep, dir) ? { verdict: OK } : { verdict: SHOT, reason: R.FORBIDDEN_ICMPV6 };
    const [r, k, e] = this.lookup(f, p, dir, ep.id, 0);
    if (r === 'rrep') return { verdict: SHOT, reason: R.POLICY_DENIED };
    if (r === 'est' || r === 'reply') {
      this.touch(p, k!, e!, r === 'est' ? 0 : 1);
      return { verdict: OK };
    }
    if (r === 'related') return { verdict: OK };
    const peer = this.identityOf(p.family, dir === EGRESS ? p.daddr : p.saddr);
    const [pass, audit] = this.decide(p, ep, dir, peer);
    if (!pass) return { verdict: SHOT, reason: R.POLICY_DENIED };
    return this.create(p, dir, ep, audit) ? { verdict: OK } : { verdict: SHOT, reason: R.INSERT_FAILED };
  }

  private enforceLocal(f: Buffer, p: Pkt, src: ModelEndpoint, dst: ModelEndpoint): Outcome {
    if (this.ndp(p) || this.mld(p)) return { verdict: SHOT, reason: R.FORBIDDEN_ICMPV6 };
    const [r, k, e] = this.lookup(f, p, LOCAL, src.id, dst.id);
    if (r === 'rrep') return { verdict: SHOT, reason: R.POLICY_DENIED };
    if (r === 'est' || r === 'reply') {
      this.touch(p, k!, e!, r === 'est' ? 0 : 1);
      return { verdict: REDIRECT };
    }
    if (r === 'related') return { verdict: REDIRECT };
    const [out, outAudit] = this.decide(p, src, EGRESS, dst.identity);
    if (!out) return { verdict: SHOT, reason: R.POLICY_DENIED };
    const [inn, inAudit] = this.decide(p, dst, INGRESS, src.identity);
    if (!inn) return { verdict: SHOT, reason: R.POLICY_DENIED };
    return this.create(p, LOCAL, src, outAudit || inAudit, dst)
      ? { verdict: REDIRECT }
      : { verdict: SHOT, reason: R.INSERT_FAILED };
  }

  fromContainer(f: Buffer, ifindex: number): Outcome {
    const src = this.endpoints.get(ifindex);
    if (!src) return { verdict: SHOT, reason: R.NO_CONFIG };
    const spoofed = checkSource(f, src, (family, a) => this.locals.get(`${family}/${a}`)?.id);
    if (spoofed) return { verdict: SHOT, reason: spoofed };
    const parsed = parse(f, this.frags);
    if (parsed.kind === 'other') return { verdict: OK };
    if (parsed.kind === 'drop') return { verdict: SHOT, reason: parsed.reason };
    const p = parsed.p;
    const dst = this.locals.get(`${p.family}/${p.daddr}`);
    if (!dst || dst.ifindex === ifindex || p.hopLimit <= 1) return this.enforce(f, p, src, EGRESS);
    const dstEp = this.endpoints.get(dst.ifindex);
    if (!dstEp) return { verdict: SHOT, reason: R.NO_CONFIG };
    return this.enforceLocal(f, p, src, dstEp);
  }

  toContainer(f: Buffer, ifindex: number): Outcome {
    const ep = this.endpoints.get(ifindex);
    if (!ep) return { verdict: SHOT, reason: R.NO_CONFIG };
    const parsed = parse(f, this.frags);
    if (parsed.kind === 'drop') return { verdict: SHOT, reason: parsed.reason };
    if (parsed.kind === 'other') return { verdict: OK };
    return this.enforce(f, parsed.p, ep, INGRESS);
  }

  /** revalidateConntrack: entries the policy no longer admits are revoked; a TCP entry whose flow the
   *  policy also denies the other way round (its answer asked as a new flow, on the flow's source port)
   *  is forgotten instead: deleted, its owner's share slot back at once (policy/revalidate.ts
   *  reverseDenied, 85987ab). Without this the model kept that slot taken and predicted a share
   *  overflow (INSERT_FAILED) for the endpoint's next new flow, which the kernel admitted. */
  revalidate(): void {
    for (const [k, e] of this.ct) {
      if (e.revoked) continue;
      const [family, , scope, sport, , s, d] = k.split('/');
      const fam = Number(family);
      const ep = this.byId(e.owner);
      if (!ep) continue;
      const q = (x: ModelEndpoint, dir: number, peer: number, port = e.port) =>
        policyVerdict(
          { policy: this.policy },
          {
            endpointId: x.id,
            flags: x.flags & 0x1f,
            direction: dir === INGRESS ? 'ingress' : 'egress',
            peer,
            proto: e.proto,
            port,
            globalAudit: this.globalAudit,
          },
        ).pass;
      const rport = Number(sport);
      let pass: boolean, reverseDenied: boolean;
      if (Number(scope) === LOCAL) {
        const dst = this.byId(e.peer);
        pass = !dst || (q(ep, EGRESS, dst.identity) && q(dst, INGRESS, ep.identity));
        reverseDenied = !!dst && !(q(dst, EGRESS, ep.identity, rport) && q(ep, INGRESS, dst.identity, rport));
      } else {
        const egress = Number(scope) === EGRESS;
        const peer = this.identityOf(fam, egress ? d : s);
        pass = q(ep, egress ? EGRESS : INGRESS, peer);
        reverseDenied = !q(ep, egress ? INGRESS : EGRESS, peer, rport);
      }
      if (pass) continue;
      if (e.proto === 6 && !e.audit && reverseDenied) {
        this.ct.delete(k); // deleting the current entry while iterating a Map is safe
        this.count(e.owner, -1);
      } else e.revoked = true;
    }
  }
}
