// Policy regular expressions (RE2 syntax, as Cilium passes them to Envoy) as JavaScript RegExps that
// match the whole value. Two guards keep an attacker who controls the matched text (a request path)
// from stalling the proxy: a pattern must be runnable by V8's linear-time engine (no backreferences
// or lookaround, which RE2 does not have either; checked when the policy is validated), and V8 is
// told to fall back to that engine on excessive backtracking, so no input costs more than linear time.
// Matching itself uses the normal (fast) engine.
import v8 from 'node:v8';

let flagsSet = false;

/** Turns on the linear-time engine (the `l` flag) and the backtracking fallback, once per process. */
export function enableLinearRegexps(): void {
  if (flagsSet) return;
  v8.setFlagsFromString('--enable-experimental-regexp-engine');
  v8.setFlagsFromString('--enable-experimental-regexp-engine-on-excessive-backtracks');
  flagsSet = true;
}

export class PolicyRegexError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PolicyRegexError';
  }
}

const POSIX_CLASSES: Record<string, string> = {
  alnum: 'a-zA-Z0-9',
  alpha: 'a-zA-Z',
  ascii: '\\x00-\\x7f',
  blank: ' \\t',
  cntrl: '\\x00-\\x1f\\x7f',
  digit: '0-9',
  graph: '!-~',
  lower: 'a-z',
  print: ' -~',
  punct: '!-\\/:-@\\[-`{-~',
  space: '\\t\\n\\v\\f\\r ',
  upper: 'A-Z',
  word: '\\w',
  xdigit: '0-9A-Fa-f',
};

/** RE2 spellings JavaScript reads differently: leading (?flags), \A, \z, [[:class:]]. */
export function translateRe2(src: string): { source: string; flags: string } {
  let flags = '';
  let body = src;
  const lead = /^\(\?([imsU]+)\)/.exec(body);
  if (lead) {
    if (lead[1].includes('U')) throw new PolicyRegexError('the (?U) flag (ungreedy) is not supported');
    flags = [...new Set(lead[1])].join('');
    body = body.slice(lead[0].length);
  }
  if (/\(\?[imsU-]+[):]/.test(body))
    throw new PolicyRegexError('inline flags like (?i) are only supported at the start of the expression');
  body = body.replace(/\[:(\^?)([a-z]+):\]/g, (_m, neg: string, name: string) => {
    const cls = POSIX_CLASSES[name];
    if (!cls) throw new PolicyRegexError(`unknown character class [:${name}:]`);
    if (neg) throw new PolicyRegexError(`negated character class [:^${name}:] is not supported`);
    return cls;
  });
  body = body.replace(/\\A/g, '^').replace(/\\z/g, '$');
  return { source: body, flags };
}

/**
 * Compiles a policy regex for whole-value matching. Throws PolicyRegexError with a message fit for a
 * policy validation error.
 */
export function compilePolicyRegex(src: string): RegExp {
  enableLinearRegexps();
  const { source, flags } = translateRe2(src);
  const anchored = `^(?:${source})$`;
  try {
    new RegExp(anchored, `${flags.replace('i', '')}l`); // the linear engine has no i flag; case does not change the structure
  } catch (e) {
    const msg = (e as Error).message;
    if (/linear time/.test(msg))
      throw new PolicyRegexError(
        `${JSON.stringify(src)} needs backtracking (backreferences or lookaround), which RE2 syntax does not have`,
      );
    throw new PolicyRegexError(
      `${JSON.stringify(src)} is not a valid regular expression: ${msg.replace(/^Invalid regular expression: \/.*\/[a-z]*: /, '')}`,
    );
  }
  return new RegExp(anchored, flags);
}
