// The policy parser's worker thread (parse-offloop.ts starts it): reads and validates documents away
// from the agent's event loop and answers with plain data (structured clone). Also fingerprints each
// policy, so the agent can tell an unchanged policy without serialising 10,000 rules itself.
import { parentPort } from 'node:worker_threads';
import { fingerprint, ruleFingerprints } from './fingerprint.ts';
import { parsePolicies, type ParseOptions } from './parse.ts';

export interface ParseRequest { id: number; text: string; opts: ParseOptions }

if (parentPort) {
  const port = parentPort;
  port.on('message', (m: ParseRequest) => {
    const result = parsePolicies(m.text, m.opts);
    const fingerprints = { policies: result.policies.map(fingerprint), rules: ruleFingerprints(result.policies) };
    // As JSON text: the agent's JSON.parse is faster than a structured clone of 10,000 rules, and
    // gives objects V8 handles as fast as any it parsed itself.
    port.postMessage({ id: m.id, json: JSON.stringify({ ...result, fingerprints }) });
  });
}
