// Reading big policy documents off the agent's event loop. A 10,000-rule import takes hundreds of
// milliseconds of YAML/JSON reading and schema validation; done on the loop, every CNI ADD and API
// request that arrives meanwhile waits for it (issue 9). Texts from OFFLOAD_MIN_BYTES up go to one
// worker thread (parse-worker.ts), started on first use and stopped when idle; small ones are read
// inline, where a round trip would cost more than the work. Where no worker can run (its entry is
// missing, it failed to start) the text is read inline: same result, only slower for the loop.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { adoptEdited, adoptFingerprints, fingerprintOf, fingerprintText } from './fingerprint.ts';
import { parsePolicies, type ParseOptions, type ParseResult } from './parse.ts';
import type { ParseAnswer, StateAnswer } from './parse-worker.ts';
import { adoptJson, adoptLazyJson, SourceText } from './record-json.ts';
import { Reparser, spliced } from './reparse.ts';
import { RuleMemo } from './rule-memo.ts';
import { resolveRuleRefs, rulesByPrint } from './rule-refs.ts';
import type { Policy, Rule } from './types.ts';

/** Below this many bytes (about 100 rules) reading inline blocks the loop for a few ms at most. */
export const OFFLOAD_MIN_BYTES = 32 * 1024;
/** An idle worker is stopped after this long (its memory is not kept for the next import). */
const IDLE_MS = 30_000;

/** How to start the worker: the bundle next to the running one, or (running from source under tsx)
 *  the source file, through tsx's loader (a worker does not inherit the main thread's hooks). */
function workerEntry(): { file: string | URL; eval?: boolean } | undefined {
  const main = process.argv[1] ? path.resolve(process.argv[1]) : '';
  const bundled = path.join(path.dirname(main), 'membrane-policy-worker');
  if (main && !main.endsWith('.ts') && fs.existsSync(bundled)) return { file: bundled };
  const url = import.meta.url;
  if (url?.startsWith('file:') && url.endsWith('.ts')) {
    const source = new URL('./parse-worker.ts', url);
    let tsx: string;
    try {
      tsx = import.meta.resolve('tsx/esm/api');
    } catch {
      return undefined;
    }
    if (!fs.existsSync(fileURLToPath(source))) return undefined;
    const code = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(source.href)}); })`;
    return { file: code, eval: true };
  }
  return undefined;
}

interface Pending {
  resolve: (r: ParseResult) => void;
  reject: (e: Error) => void;
  text: string;
}

/** The worker's last clean one-policy answer as the agent holds it; an edit of its text inside one
 *  rule is reread here (reparse.ts): one rule parsed and validated on the event loop, well under a
 *  millisecond, instead of the whole text's trip to a worker that runs at a lower priority. */
interface Last {
  id: number;
  text: string;
  policy: Policy;
  policyJson: () => string;
  sourceJson: () => string;
  /** From the worker's state message (undefined until then, or when the text cannot be reread). */
  reparser?: Reparser;
}

export interface PolicyParserOptions {
  /** Texts this big or bigger go to the worker (default OFFLOAD_MIN_BYTES; 0: all of them). */
  minBytes?: number;
  log?: { warn(o: object, msg: string): void };
}

export class PolicyParser {
  private worker?: Worker;
  private unavailable = false;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private idle?: NodeJS.Timeout;
  private readonly minBytes: number;
  /** Rules of the last inline parse: replacing one policy by name again (kubectl apply of one CNP)
   *  validates the rules that changed, not all of them (rule-memo.ts; the worker keeps its own). */
  private readonly inlineMemo = new RuleMemo();
  /** The rules of the worker's last answer: its next answer may refer to them (rule-refs.ts). */
  private recent = new Map<string, Rule>();
  private last?: Last;
  /** Until the worker's state message for its last clean answer arrives (remember() takes it tens of
   *  ms after a 10,000-rule answer): an import meanwhile waits for it rather than going to the worker. */
  private stateFor?: { id: number; arrived: Promise<void>; arrive: () => void };
  /** Texts reread here (rereadHere), for tests and logs. */
  rereads = 0;

  constructor(private readonly opts: PolicyParserOptions = {}) {
    this.minBytes = opts.minBytes ?? OFFLOAD_MIN_BYTES;
  }

  /** Same result as parsePolicies (bad input is issues, never a rejection). */
  parse(text: string, opts: ParseOptions): Promise<ParseResult> {
    if (this.stateFor && !this.pending.size && typeof text === 'string') {
      const w = this.worker;
      w?.ref(); // the state is owed to an import now
      return this.stateFor.arrived.then(() => {
        if (w && !this.pending.size) w.unref();
        return this.parse(text, opts);
      });
    }
    const again = this.rereadHere(text, opts);
    if (again) return Promise.resolve(again);
    const worker = typeof text === 'string' && Buffer.byteLength(text) >= this.minBytes ? this.ensureWorker() : undefined;
    if (!worker) {
      const r = parsePolicies(text, { ...opts, memo: this.inlineMemo });
      this.inlineMemo.turn();
      return Promise.resolve(r);
    }
    clearTimeout(this.idle);
    const id = this.nextId++;
    worker.ref(); // an answer is owed: keep the process alive for it
    return new Promise<ParseResult>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, text });
      worker.postMessage({ id, text, opts });
    }).catch((e: Error) => {
      // The worker died under this request (out of memory, a crash): read it here instead.
      this.opts.log?.warn({ err: e.message }, 'policy parser worker failed; reading the policy on the event loop');
      return parsePolicies(text, opts);
    });
  }

  /** Stops the worker (pending requests are read inline). */
  async close(): Promise<void> {
    clearTimeout(this.idle);
    const w = this.worker;
    this.worker = undefined;
    if (w) await w.terminate();
  }

  private ensureWorker(): Worker | undefined {
    if (this.worker || this.unavailable) return this.worker;
    const entry = workerEntry();
    if (!entry) {
      this.unavailable = true;
      return undefined;
    }
    let w: Worker;
    try {
      w = new Worker(entry.file, {
        name: 'membrane-policy-parser',
        eval: !!entry.eval,
        resourceLimits: { maxYoungGenerationSizeMb: 64 },
      });
    } catch (e) {
      this.unavailable = true;
      this.opts.log?.warn(
        { err: (e as Error).message },
        'cannot start the policy parser worker; policies are read on the event loop',
      );
      return undefined;
    }
    w.unref();
    w.on('message', (m: ParseAnswer | StateAnswer) => {
      if ('state' in m) {
        this.adoptState(m);
        return;
      }
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      const result = {
        ...JSON.parse(m.json),
        policies: m.policyJson.map((whole, i) => {
          const policy = JSON.parse(m.parseJson[i] ?? whole) as Policy;
          adoptJson(policy, whole);
          return policy;
        }),
        sources: m.sourceJson.map((j) => new SourceText(j)),
      } as ParseResult;
      const prints = result.fingerprints?.rules ?? [];
      if (!resolveRuleRefs(result.policies, this.recent)) {
        // Cannot happen while both sides keep to the protocol; should it, read the text here and
        // start the next worker afresh.
        p?.reject(new Error('the policy parser worker referred to a rule the agent does not hold'));
        void this.close();
        return;
      }
      this.recent = rulesByPrint(result.policies, prints);
      adoptFingerprints(result.policies, result.fingerprints?.policies, prints);
      // A refused text changes nothing: edits are still reread from the last clean answer.
      if (!result.issues.length) {
        this.last =
          p && result.policies.length === 1
            ? {
                id: m.id,
                text: p.text,
                policy: result.policies[0],
                policyJson: () => m.policyJson[0],
                sourceJson: () => m.sourceJson[0],
              }
            : undefined;
        this.expectState(m.id);
      }
      p?.resolve(result);
      if (!this.pending.size) this.quiesce(w);
    });
    const fail = (err: Error) => {
      if (this.worker === w) this.worker = undefined;
      this.stateFor?.arrive(); // none is coming
      const waiting = [...this.pending.values()];
      this.pending.clear();
      for (const p of waiting) p.reject(err);
    };
    w.on('error', fail);
    w.on('exit', (code) => fail(new Error(`the policy parser worker exited (code ${code})`)));
    this.worker = w;
    return w;
  }

  private expectState(id: number): void {
    this.stateFor?.arrive();
    let arrive = () => {};
    const arrived = new Promise<void>((resolve) => {
      arrive = resolve;
    });
    this.stateFor = {
      id,
      arrived,
      arrive: () => {
        if (this.stateFor?.id === id) this.stateFor = undefined;
        arrive();
      },
    };
  }

  private adoptState(m: StateAnswer): void {
    const last = this.last;
    if (m.state && last?.id === m.id && !last.reparser) {
      last.reparser = Reparser.adopt(m.state, last.text, last.policy);
      last.text = ''; // the reparser holds the latest
    }
    if (this.stateFor?.id === m.id) this.stateFor.arrive();
  }

  /** `text` read from the last clean answer's when it changed inside one rule (or not at all). */
  private rereadHere(text: string, opts: ParseOptions): ParseResult | undefined {
    const last = this.last;
    if (!last?.reparser || this.pending.size || typeof text !== 'string') return undefined;
    const again = last.reparser.reread(text, opts);
    if (!again) return undefined;
    this.rereads++;
    const { edit, policy } = again;
    const base = last.policy;
    if (edit.rule >= 0) last.policyJson = spliced(last.policyJson, edit.policyAt, edit.ruleJson);
    if (edit.sourceAt) last.sourceJson = spliced(last.sourceJson, edit.sourceAt, edit.sourceText);
    last.policy = policy;
    if (policy !== base) {
      const rule = policy.specs[0].rules[edit.rule];
      const print = fingerprintText(edit.ruleJson);
      fingerprintOf(rule, print);
      this.recent.set(print, rule);
      const json = last.policyJson;
      adoptLazyJson(policy, json);
      adoptEdited(policy, base, () => fingerprintText(json()));
    }
    return { policies: [policy], sources: [new SourceText(last.sourceJson)], issues: [] };
  }

  /** No answer owed: the worker may not keep the process alive, and goes after IDLE_MS. */
  private quiesce(w: Worker): void {
    w.unref();
    clearTimeout(this.idle);
    this.idle = setTimeout(() => {
      if (this.worker === w && !this.pending.size) void this.close();
    }, IDLE_MS);
    this.idle.unref();
  }
}
