// The policy parser's worker thread (parse-offloop.ts starts it): reads and validates documents away
// from the agent's event loop and answers with plain data (structured clone). Also fingerprints each
// policy, so the agent can tell an unchanged policy without serialising 10,000 rules itself, and after
// a clean answer works out what the agent needs to reread edits of that text itself (reparse.ts).
import fs from 'node:fs';
import os from 'node:os';
import { parentPort } from 'node:worker_threads';
import { fingerprintText, ruleFingerprints } from './fingerprint.ts';
import { parsePolicies, type ParseOptions } from './parse.ts';
import { type ReparseState, Reparser } from './reparse.ts';
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
}

/** After each clean answer, once worked out: what rereading an edit of its text needs (reparse.ts;
 *  the agent rereads such edits on its own thread: one rule's work, no trip here); null: the text
 *  does not have the shape a reread handles. */
export interface StateAnswer {
  id: number;
  state: ReparseState | null;
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
  port.on('message', (m: ParseRequest) => {
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
    // A refused text changes nothing the agent holds: it keeps rereading from the last clean answer.
    if (!rest.issues.length) {
      const reparser = new Reparser();
      const ok = reparser.remember(m.text, m.opts, policies, policyJson, sourceJson, sources);
      const state: StateAnswer = { id: m.id, state: (ok && reparser.handOver()) || null };
      port.postMessage(state);
    }
  });
}
