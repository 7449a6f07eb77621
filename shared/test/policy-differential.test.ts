// Differential test of the incremental policy sync: random sequences of imports (new policies, edits
// of one or two rules, allow <-> deny swaps, new subjects, identical re-imports, renames, two
// policies in one document, imports refused by the maps), deletes, endpoint ADDs (reusing a deleted
// endpoint's id and address), DELs, relabels, audit, host address changes, and DNS answers for
// toFQDNs peers and their expiry are applied to an engine over in-memory maps; after every step its maps (policy entries,
// ipcache, endpoint flags) must equal what one full sync of a fresh engine over fresh maps writes
// for the same stored policies and endpoints. CIDR and FQDN identities are compared by what they
// stand for (two engines number them in another order). Two engines run the same sequence: one
// reading imports inline (the rule memo), one through the parser's worker (rule references and the
// one-rule reread on the agent's thread), so every way an edit keeps unchanged rules' objects is
// taken. A stale allow or a missing deny after some sequence is a policy bypass: any difference
// fails with the seed and the steps that led there. The seed is fixed by default (a CI run is
// reproducible); DIFF_SEED=n replays n, DIFF_SEED=random explores, DIFF_STEPS=n sets the length
// (150: ~10 s). Breaking the incremental path fails it within a few dozen steps (checked by hand:
// a rule edit that does not drop the replaced rule's use, record-use.ts; a delta apply that keeps
// removed keys, apply.ts; unchanged CIDR rules not resolved again after the CIDR identities moved,
// peer-deps.ts).
import t, { type Test } from 'tap';
import { FqdnState } from '../src/fqdn/state.ts';
import { keyOf } from '../src/fqdn/identities.ts';
import type { CidrIdentities } from '../src/identity/cidr.ts';
import { identityKind } from '../src/identity/reserved.ts';
import type { CompileCache } from '../src/policy/desired.ts';
import { attachmentId } from '../src/endpoint/naming.ts';
import { PolicyEngine } from '../src/policy/engine.ts';
import type { PolicyParser } from '../src/policy/parse-offloop.ts';
import { decodePolicyKey } from '../src/policy/map-codec.ts';
import { MemoryStore } from '../src/store/index.ts';
import type { Endpoint } from '../src/types.ts';
import { MemoryPolicyOps, testEndpoint } from './lib/policy.ts';
import { APPS, docText, editDoc, randomDoc, type Doc } from './lib/policy-diff-gen.ts';
import { seeded, testSeed } from './lib/seeded.ts';

const seed = testSeed('DIFF_SEED', 577_215);
const STEPS = Number(process.env.DIFF_STEPS ?? 150);
const PORTS = { http: 15001, dns: 15053 };
const NAMES = ['p0', 'p1', 'p2', 'p3', 'p4'];

type Answer = [names: string[], ip: string];
const ANSWERS: Answer[] = [
  [['api.example.com.'], '198.18.0.5'],
  [['api.example.com.'], '198.18.7.9'],
  [['db.example.com.'], '198.19.0.9'],
  [['db.example.com.'], '198.18.0.2'],
  [['other.example.com.'], '198.18.0.6'],
];

function copyStore(store: MemoryStore): MemoryStore {
  const copy = new MemoryStore();
  const docs = (s: MemoryStore) => (s as unknown as { docs: Map<string, string> }).docs;
  for (const [k, v] of docs(store)) docs(copy).set(k, v);
  return copy;
}

interface Side {
  engine: PolicyEngine;
  ops: MemoryPolicyOps;
  fqdn: FqdnState;
}

/** The node's address (a step changes it: to a policy /32, to an endpoint's address). */
const host = ['192.0.2.1'];

async function openSide(store: MemoryStore, parseOffloadBytes?: number): Promise<Side> {
  const ops = new MemoryPolicyOps(100_000, 100_000);
  const fqdn = new FqdnState(0);
  const engine = await PolicyEngine.open({
    store,
    ops,
    hostAddresses: () => [...host],
    proxyPorts: () => PORTS,
    fqdn,
    parseOffloadBytes,
  });
  return { engine, ops, fqdn };
}

/** What the engine keeps to itself: the compile cache and the parser. */
const internals = (e: PolicyEngine) =>
  e as unknown as {
    compileCache: { current?: CompileCache };
    parser: PolicyParser;
    cidrs: CidrIdentities;
    cidrsRecords?: unknown;
  };

/** The maps with CIDR and FQDN identities named by what they stand for. An ipcache entry of an
 *  identity the FQDN state does not know stays a number (then it differs from a full sync). */
function named(s: Side) {
  const { cidrs } = internals(s.engine);
  const name = (id: number): string | number => {
    const f = s.fqdn.identities.get(id);
    return f ? keyOf(f.selectors, f.prefixes) : (cidrs.prefixOf(id) ?? id);
  };
  const policy = [...s.ops.policy]
    .map(([k, e]) => {
      const key = decodePolicyKey(Buffer.from(k, 'hex'));
      // Entries of an FQDN identity that expired stay until the next full sync (only the ipcache is
      // written then): unreachable, as no address has the identity and a new one takes a full sync.
      if (identityKind(key.peer) === 'fqdn' && !s.fqdn.identities.get(key.peer)) return '';
      return JSON.stringify({ ...key, peer: name(key.peer), action: e.action, ruleId: e.ruleId, proxy: e.proxyPort ?? 0 });
    })
    .filter((e) => e)
    .sort();
  const ipcache = [...s.ops.ipcache].map(([p, id]) => `${p} ${name(id)}`).sort();
  const flags = [...s.ops.flags].sort((a, b) => a[0] - b[0]).map(([i, f]) => `${i}:${f}`);
  // The FQDN state's own view (what `identity list` and `policy trace` show): every address's identity
  // by what it stands for, and the identities named (a full sync holds only those some address has;
  // the incremental state may still hold one a DNS answer just moved an address off, until its next
  // policy change or expiry, so only addresses' identities must all be listed).
  const fqdn = [...s.fqdn.ipcacheEntries()].map(([p, id]) => `${p} ${name(id)}`).sort();
  const listed = new Set(s.fqdn.identities.list().map((i) => i.id));
  const fqdnListed = [...s.fqdn.ipcacheEntries().values()].filter((id) => !listed.has(id)).map((id) => `unlisted ${id}`);
  return { policy, ipcache, flags, fqdn: [...fqdn, ...fqdnListed] };
}

/** What one full sync of a fresh engine writes for the same store, endpoints and DNS answers. */
async function fromScratch(store: MemoryStore, eps: Endpoint[], answers: Answer[]) {
  const side = await openSide(copyStore(store));
  for (const [names, ip] of answers) side.fqdn.learn(1, names, [{ ip, ttl: 3600 }], 0);
  for (const ep of eps) {
    side.ops.flags.set(ep.hostIfIndex, 0);
    await side.engine.endpointAttached(ep);
  }
  await side.engine.start();
  await side.engine.close();
  return named(side);
}

/** The first difference between two named snapshots, readable. */
function firstDifference(a: ReturnType<typeof named>, b: ReturnType<typeof named>): string {
  for (const part of ['policy', 'ipcache', 'flags', 'fqdn'] as const) {
    const x = new Set(a[part]),
      y = new Set(b[part]);
    const extra = a[part].filter((e) => !y.has(e));
    const missing = b[part].filter((e) => !x.has(e));
    if (extra.length || missing.length)
      return `${part}: incremental has ${JSON.stringify(extra.slice(0, 4))} a full sync does not; lacks ${JSON.stringify(missing.slice(0, 4))}`;
  }
  return '';
}

async function run(t: Test, parseOffloadBytes: number | undefined, label: string) {
  const rnd = seeded(seed);
  host[0] = '192.0.2.1';
  const store = new MemoryStore();
  const side = await openSide(store, parseOffloadBytes);
  const { engine, ops, fqdn } = side;
  await engine.start();
  const docs = new Map<string, Doc>();
  const eps: Endpoint[] = [];
  const answers: Answer[] = [];
  let nextEp = 1;
  const log: string[] = [];
  let containers = 0;
  const addEp = async (app: string) => {
    // Now and then the lowest free endpoint id (and with it the address and host ifindex) of a
    // deleted endpoint, for a new container: keys a DEL removed may be wanted again.
    const free = [...Array(nextEp).keys()].slice(1).find((i) => !eps.some((e) => e.id === i));
    const id = free !== undefined && rnd(2) ? free : nextEp++;
    const labels = { app };
    const ep = {
      ...testEndpoint(id, labels, await engine.identityFor(labels), `10.0.${id >> 8}.${(id & 255) + 1}`),
      containerId: `k${containers++}`,
    };
    ops.flags.set(ep.hostIfIndex, 0);
    await engine.endpointAttached(ep);
    eps.push(ep);
    return ep;
  };
  for (const app of APPS) await addEp(app);
  /** Now and then an import fails: a policy write refused half-way, or too many entries for the
   *  map. It must change nothing (the documents go back to what the store holds). */
  let failures = 0;
  let stepDocs = new Map(docs);
  const imp = async (text: string) => {
    const f = rnd(8);
    if (f === 0) ops.failNextPolicyWrite = true;
    if (f === 1) ops.policyCapacity = 8;
    try {
      await engine.importText(text);
      return true;
    } catch (e) {
      if (f > 1) throw e;
      failures++;
      docs.clear();
      for (const [n, d] of stepDocs) docs.set(n, d);
      return false;
    } finally {
      ops.failNextPolicyWrite = false;
      ops.policyCapacity = 100_000;
    }
  };
  let failed = false;
  const seen = new WeakSet<object>();
  let edited = 0,
    patched = 0;
  for (let step = 0; step < STEPS && !failed; step++) {
    const k = rnd(100);
    stepDocs = new Map(docs);
    const names = [...docs.keys()];
    let what: string;
    if (k < 40 && names.length) {
      const name = names[rnd(names.length)];
      const e = editDoc(rnd, docs.get(name)!);
      docs.set(name, e.doc);
      what = `edit ${name}: ${e.what}`;
      await imp(docText(e.doc));
    } else if (k < 52 || !names.length) {
      const name = NAMES[rnd(NAMES.length)];
      const d = randomDoc(rnd, name);
      docs.set(name, d);
      what = `import new ${name}`;
      await imp(docText(d));
    } else if (k < 56) {
      const name = names[rnd(names.length)];
      what = `re-import ${name} unchanged`;
      await imp(docText(docs.get(name)!));
    } else if (k < 62) {
      const name = names[rnd(names.length)];
      docs.delete(name);
      what = `delete ${name}`;
      await engine.delete([name]);
    } else if (k < 66) {
      const from = names[rnd(names.length)];
      const to = NAMES.find((n) => !docs.has(n));
      if (!to) continue;
      const d = { ...docs.get(from)!, name: to };
      docs.delete(from);
      docs.set(to, d);
      what = `rename ${from} -> ${to}`;
      if (await imp(docText(d))) await engine.delete([from]);
    } else if (k < 70 && names.length >= 2) {
      const [a, b] = [names[rnd(names.length)], names[rnd(names.length)]];
      const ea = editDoc(rnd, docs.get(a)!).doc;
      docs.set(a, ea);
      const eb = a === b ? ea : editDoc(rnd, docs.get(b)!).doc;
      docs.set(b, eb);
      what = `edit ${a} and ${b} in one document`;
      await imp(a === b ? docText(ea) : `${docText(ea)}\n---\n${docText(eb)}`);
    } else if (k < 78) {
      const ep = await addEp(APPS[rnd(APPS.length)]);
      what = `ADD ${ep.id} ${ep.labels.app}`;
    } else if (k < 85 && eps.length > 1) {
      const ep = eps.splice(rnd(eps.length), 1)[0];
      what = `DEL ${ep.id} ${ep.labels.app}`;
      ops.flags.delete(ep.hostIfIndex); // its config goes first, as in the endpoint manager
      await engine.endpointDeleted(ep);
    } else if (k < 90 && eps.length) {
      const i = rnd(eps.length);
      const labels = { app: APPS[rnd(APPS.length)] };
      eps[i] = { ...eps[i], labels, identity: await engine.identityFor(labels) };
      what = `relabel ${eps[i].id} -> ${labels.app}`;
      await engine.endpointLabelsChanged(eps[i]);
    } else if (k < 92) {
      host[0] = ['192.0.2.1', '198.18.0.1', '10.0.0.4'][rnd(3)];
      what = `host address ${host[0]}`;
      await engine.refreshHostAddresses();
    } else if (k < 94 && eps.length) {
      const ep = eps[rnd(eps.length)];
      const on = [true, false, null][rnd(3)];
      what = `audit ${ep.id} ${on}`;
      await engine.setAudit(attachmentId(ep), ep.ifName, on);
    } else if (answers.length && rnd(4) === 0) {
      // Every DNS entry expires (as the agent's upkeep tells the engine).
      what = 'DNS entries expire';
      answers.length = 0;
      const r = fqdn.expire(Number.MAX_SAFE_INTEGER, () => false);
      if (r.changed.length) await engine.fqdnChanged(r.changed, false);
    } else {
      const a = ANSWERS[rnd(ANSWERS.length)];
      answers.push(a);
      what = `DNS ${a[0][0]} ${a[1]}`;
      const r = fqdn.learn(1, a[0], [{ ip: a[1], ttl: 3600 }], 0);
      if (r.changed.length || r.newIdentity) await engine.fqdnChanged(r.changed, r.newIdentity);
    }
    log.push(`${step}: ${what}`);
    const compiler = internals(engine).compileCache.current?.compiler;
    if (compiler && !seen.has(compiler)) {
      seen.add(compiler);
      edited += compiler.edited;
      patched += compiler.patched;
    }
    // A refused import takes its changes to the FQDN state back with the maps' (FqdnState.undo): the
    // state and the maps are compared with a full sync's after every step, refused imports included.
    const got = named(side);
    const want = await fromScratch(store, eps, answers);
    const diff = firstDifference(got, want);
    if (diff) {
      failed = true;
      t.fail(`${label}, DIFF_SEED=${seed}, step ${step} (${what}): ${diff}\nsteps:\n${log.join('\n')}`);
    }
  }
  await engine.close();
  if (!failed) t.pass(`${label}: ${STEPS} steps, the maps equal a full sync after each (DIFF_SEED=${seed})`);
  const rereads = internals(engine).parser.rereads;
  t.comment(
    `rule uses edited from changed rules: ${edited}, tables patched: ${patched}, rereads: ${rereads}, failed imports: ${failures}`,
  );
  // The incremental paths were taken, not only full builds.
  t.ok(edited > 3 && patched > 3, `rule uses edited (${edited}) and tables patched (${patched})`);
  if (parseOffloadBytes === 0) t.ok(rereads > 1, `one-rule edits reread on the agent's thread (${rereads})`);
}

t.test('incremental sync = full sync after every step (imports read inline)', async (t) => {
  t.comment(`DIFF_SEED=${seed}`);
  await run(t, undefined, 'inline');
});

t.test('incremental sync = full sync after every step (imports through the worker, edits reread)', async (t) => {
  await run(t, 0, 'worker');
});
