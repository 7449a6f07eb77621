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
import type { ParseAnswer } from './parse-worker.ts';
import { adoptJson, adoptLazyJson, SourceText } from './record-json.ts';
import { applyEdit, spliced } from './reparse.ts';
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

  constructor(private readonly opts: PolicyParserOptions = {}) {
    this.minBytes = opts.minBytes ?? OFFLOAD_MIN_BYTES;
  }

  /** Same result as parsePolicies (bad input is issues, never a rejection). */
  parse(text: string, opts: ParseOptions): Promise<ParseResult> {
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
      this.pending.set(id, { resolve, reject });
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
    /** The rules of this worker's last answer: its next answer may refer to them (rule-refs.ts). */
    let recent = new Map<string, Rule>();
    /** The last clean answer's one policy and texts: an edit answer (reparse.ts) applies to it. */
    let last: { id: number; policy: Policy; policyJson: () => string; sourceJson: () => string } | undefined;
    w.on('message', (m: ParseAnswer) => {
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (m.edit) {
        if (last?.id !== m.edit.base) {
          // Cannot happen while both sides keep to the protocol (as for references below).
          p?.reject(new Error('the policy parser worker edited a policy the agent does not hold'));
          void this.close();
          return;
        }
        const base = last.policy;
        const { policy, rule } = applyEdit(base, m.edit);
        const { sourceAt, sourceText } = m.edit;
        last = {
          id: m.id,
          policy,
          policyJson: rule ? spliced(last.policyJson, m.edit.policyAt, m.edit.ruleJson) : last.policyJson,
          sourceJson: sourceAt ? spliced(last.sourceJson, sourceAt, sourceText) : last.sourceJson,
        };
        if (rule) {
          fingerprintOf(rule, m.edit.rulePrint);
          recent.set(m.edit.rulePrint, rule);
          const json = last.policyJson;
          adoptLazyJson(policy, json);
          adoptEdited(policy, base, () => fingerprintText(json()));
        }
        p?.resolve({ policies: [policy], sources: [new SourceText(last.sourceJson)], issues: [] });
        if (!this.pending.size) this.quiesce(w);
        return;
      }
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
      if (!resolveRuleRefs(result.policies, recent)) {
        // Cannot happen while both sides keep to the protocol; should it, read the text here and
        // start the next worker afresh.
        p?.reject(new Error('the policy parser worker referred to a rule the agent does not hold'));
        void this.close();
        return;
      }
      recent = rulesByPrint(result.policies, prints);
      adoptFingerprints(result.policies, result.fingerprints?.policies, prints);
      // The worker edits only a one-policy answer it read clean (a refused one changes nothing).
      if (!result.issues.length)
        last =
          result.policies.length === 1
            ? { id: m.id, policy: result.policies[0], policyJson: () => m.policyJson[0], sourceJson: () => m.sourceJson[0] }
            : undefined;
      p?.resolve(result);
      if (!this.pending.size) this.quiesce(w);
    });
    const fail = (err: Error) => {
      if (this.worker === w) this.worker = undefined;
      const waiting = [...this.pending.values()];
      this.pending.clear();
      for (const p of waiting) p.reject(err);
    };
    w.on('error', fail);
    w.on('exit', (code) => fail(new Error(`the policy parser worker exited (code ${code})`)));
    this.worker = w;
    return w;
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
