// The policy parser's worker thread (parse-offloop.ts starts it): reads and validates documents away
// from the agent's event loop and answers with plain data (structured clone). Also fingerprints each
// policy, so the agent can tell an unchanged policy without serialising 10,000 rules itself.
import fs from 'node:fs';
import os from 'node:os';
import { parentPort } from 'node:worker_threads';
import { fingerprintOf, fingerprintText, ruleFingerprints } from './fingerprint.ts';
import { parsePolicies, type ParseOptions } from './parse.ts';
import { type Edit, Reparser } from './reparse.ts';
import { RuleMemo } from './rule-memo.ts';
import { withRuleRefs } from './rule-refs.ts';

/** The worker's answer: the result without policies and sources as JSON, and those as JSON each. */
export interface ParseAnswer {
  id: number;
  json: string;
  /** Each policy whole (what the store keeps). */
  policyJson: string[];
  sourceJson: string[];
  /** Each policy to parse, with the rules of the last answer as references; null: parse it whole. */
  parseJson: (string | null)[];
  /** Instead of the above: the policy of answer `base` with one rule replaced (reparse.ts). */
  edit?: Edit & { base: number; rulePrint: string };
}

export interface ParseRequest {
  id: number;
  text: string;
  opts: ParseOptions;
}

/** Reading an import is background work next to pod creation: on a busy node the CNI plugin, the
 *  runtime and the agent's event loop get the CPU first. Linux gives each thread its own nice value
 *  (setpriority on the thread id); elsewhere this is skipped. */
export const WORKER_NICE = 10;

function lowerPriority(): void {
  try {
    const tid = Number(fs.readlinkSync('/proc/thread-self').split('/').pop());
    if (tid > 0) os.setPriority(tid, WORKER_NICE);
  } catch {
    /* not Linux, or not allowed: same result, only less polite */
  }
}

if (parentPort) {
  const port = parentPort;
  lowerPriority();
  /** Fingerprints of the rules in the last answer: the agent holds those. */
  let sent = new Set<string>();
  /** Rules of the last parse: a one-rule change validates one rule (rule-memo.ts). */
  const memo = new RuleMemo();
  /** The last clean text: a one-rule edit of it reads that rule only (reparse.ts). */
  const reparser = new Reparser();
  /** The answer the reparser's last text was read for: the agent holds its policy. */
  let base: number | undefined;
  port.on('message', (m: ParseRequest) => {
    const again = base === undefined ? undefined : reparser.reread(m.text, m.opts);
    if (again && base !== undefined) {
      const { edit, policy } = again;
      const rule = policy.specs[0].rules[edit.rule];
      const rulePrint = rule ? fingerprintOf(rule, fingerprintText(edit.ruleJson)) : '';
      if (rulePrint) sent.add(rulePrint); // the agent adds it to what it holds too
      const answer: ParseAnswer = {
        id: m.id,
        json: JSON.stringify({ issues: [] }),
        policyJson: [],
        sourceJson: [],
        parseJson: [],
        edit: { ...edit, base, rulePrint },
      };
      base = m.id;
      port.postMessage(answer);
      return;
    }
    const { policies, sources, ...rest } = parsePolicies(m.text, { ...m.opts, memo });
    memo.turn();
    // Each policy and source as its own JSON text: the agent's JSON.parse is faster than a structured
    // clone of 10,000 rules (and gives objects V8 handles as fast as any it parsed itself), and the
    // agent keeps the text for the store (record-json.ts) instead of serialising the policy again.
    const policyJson = policies.map((p) => JSON.stringify(p));
    const sourceJson = sources.map((s) => JSON.stringify(s) ?? 'null');
    const fingerprints = { policies: policyJson.map(fingerprintText), rules: ruleFingerprints(policies) };
    // What the agent parses: rules of the last answer as references (rule-refs.ts).
    const parseJson = withRuleRefs(policies, fingerprints.rules, sent).map((p) => (p ? JSON.stringify(p) : null));
    sent = new Set(fingerprints.rules.flat(2));
    const json = JSON.stringify({ ...rest, fingerprints });
    const answer: ParseAnswer = { id: m.id, json, policyJson, sourceJson, parseJson };
    port.postMessage(answer);
    // A refused text changes nothing the agent holds: the base stays the last clean answer's.
    if (!rest.issues.length) base = reparser.remember(m.text, m.opts, policies, policyJson, sourceJson) ? m.id : undefined;
  });
}
