// Random and mutated request inputs (JSON documents, text, environments) for the front-door fuzzers.
// Seeded: a failure names its seed, and FUZZ_SEED=N runs that sequence again.
export class Rng {
  private s: number;
  constructor(readonly seed: number) {
    this.s = seed >>> 0 || 1;
  }
  /** xorshift32: small, fast, reproducible. */
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    this.s = x;
    return x / 0x1_0000_0000;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
}

/** A random value as an environment variable's text (which cannot hold NUL: execve stops there). */
export function asText(v: unknown): string {
  const text = typeof v === 'string' ? v : (JSON.stringify(v) ?? '');
  return text.replaceAll('\0', '');
}

/** Strings that have broken parsers: empty, huge, control characters, paths, numbers as text, injection. */
const NASTY_STRINGS = [
  '',
  ' ',
  '\0',
  'a\0b',
  '\n',
  '\r\n',
  '..',
  '../../etc/passwd',
  '/',
  '/proc/self/ns/net',
  '-1',
  '0',
  '4294967296',
  '1e309',
  'NaN',
  'null',
  'true',
  '{}',
  '[]',
  '"',
  "'",
  '\\',
  '%00',
  '%s%s%s',
  '10.0.0.1',
  '10.0.0.0/33',
  '256.1.1.1',
  '::1',
  'fe80::1%eth0',
  '0.0.0.0/0',
  'ff:ff:ff:ff:ff:ff',
  'eth0',
  'a'.repeat(16),
  'lo',
  'reserved:host',
  'k8s:io.kubernetes.pod.namespace',
  '__proto__',
  'constructor',
  'ünïcödé',
  '\u202e',
  '\ud800',
  '😀',
  '$(reboot)',
  '`id`',
  ';ls',
  'x'.repeat(5000),
];
const NASTY_NUMBERS = [0, -1, 1, 65535, 65536, 2 ** 31, 2 ** 53, -(2 ** 53), 1.5, 1e308, -0];

export function randomValue(r: Rng, depth = 0): unknown {
  switch (r.int(depth > 2 ? 5 : 7)) {
    case 0:
      return null;
    case 1:
      return r.chance(0.5);
    case 2:
      return r.pick(NASTY_NUMBERS);
    case 3:
    case 4:
      return r.pick(NASTY_STRINGS);
    case 5:
      return Array.from({ length: r.int(4) }, () => randomValue(r, depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      // An own property even for "__proto__" (plain assignment would replace the prototype instead,
      // and JSON would lose the key a prototype-pollution attempt needs).
      for (let i = r.int(4); i > 0; i--)
        Object.defineProperty(o, r.pick(NASTY_STRINGS).slice(0, 40) || 'k', {
          value: randomValue(r, depth + 1),
          enumerable: true,
          writable: true,
          configurable: true,
        });
      return o;
    }
  }
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Every path into a document (object keys and array indexes). */
function paths(v: unknown, at: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  out.push(at);
  if (Array.isArray(v))
    v.forEach((x, i) => {
      paths(x, [...at, i], out);
    });
  else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) paths(x, [...at, k], out);
  return out;
}

/** One to three structural changes to a valid document: a value replaced, a key dropped, a stranger added. */
export function mutateDoc(r: Rng, doc: unknown): unknown {
  let d = JSON.parse(JSON.stringify(doc)) as Json;
  for (let n = 1 + r.int(3); n > 0; n--) {
    const all = paths(d);
    const p = r.pick(all);
    if (p.length === 0) {
      if (r.chance(0.2)) d = randomValue(r) as Json;
      continue;
    }
    const parent = p.slice(0, -1).reduce<any>((o, k) => o[k], d);
    const key = p[p.length - 1];
    const op = r.int(4);
    if (op === 0 && !Array.isArray(parent)) delete parent[key];
    else if (op === 1 && !Array.isArray(parent))
      Object.defineProperty(parent, r.pick(NASTY_STRINGS).slice(0, 30) || 'extra', {
        value: randomValue(r),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    else parent[key] = randomValue(r);
  }
  return d;
}

/** Byte-level damage to a serialised document: cut, a flipped byte, junk in the middle, doubled. */
export function mutateText(r: Rng, text: string): string {
  const i = r.int(text.length + 1);
  switch (r.int(5)) {
    case 0:
      return text.slice(0, i);
    case 1:
      return text.slice(0, i) + String.fromCharCode(r.int(256)) + text.slice(i + 1);
    case 2:
      return text.slice(0, i) + r.pick(NASTY_STRINGS) + text.slice(i);
    case 3:
      return text + text;
    default:
      return r.pick(['', 'null', '[]', '"x"', '1', '{', '{"a":', '\u0000'.repeat(8), 'not json at all']);
  }
}

/** A body for a JSON front door: mostly structure-aware mutations of a valid one, some raw damage. */
export function fuzzBody(r: Rng, valid: unknown): string {
  if (r.chance(0.7)) return JSON.stringify(mutateDoc(r, valid));
  if (r.chance(0.5)) return mutateText(r, JSON.stringify(valid));
  return JSON.stringify(randomValue(r));
}
