// Where the elements of a few arrays sit in a JSON text, found by a structural scan (no values built):
// reparse.ts uses the positions to read again only the rule a one-rule edit touched. Only texts that
// JSON.parse accepted are scanned, so the scan can be lenient about what is not structure. It refuses
// (undefined) whatever it cannot place for certain: a missing path, a key written with an escape, or a
// key that appears twice on the way (JSON.parse keeps the last; the scan would have to agree).

/** Per array key: the elements' [start, end) offsets, flat (start0, end0, start1, end1, ...). */
export type ListSpans = Map<string, number[]>;

const WS = new Uint8Array(128);
for (const c of ' \t\n\r') WS[c.charCodeAt(0)] = 1;

class Scan {
  i = 0;
  constructor(readonly s: string) {}

  ws(): void {
    const s = this.s;
    let i = this.i;
    for (let c = s.charCodeAt(i); c < 128 && WS[c]; c = s.charCodeAt(++i));
    this.i = i;
  }

  /** A string at i (opening quote): its raw body, or null when it has an escape. */
  str(): string | null {
    const s = this.s;
    const start = this.i + 1;
    let i = start;
    let escaped = false;
    for (;;) {
      const c = s.charCodeAt(i);
      if (c === 34) break;
      if (i >= s.length) throw new RangeError('unterminated string');
      if (c === 92) {
        escaped = true;
        i++;
      }
      i++;
    }
    this.i = i + 1;
    return escaped ? null : s.slice(start, i);
  }

  /** Skips the value at i (after whitespace). */
  value(): void {
    const s = this.s;
    const c = s.charCodeAt(this.i);
    if (c === 34) {
      // A string: only its end matters (indexOf is much faster than a char loop for long ones).
      let i = this.i + 1;
      for (;;) {
        const q = s.indexOf('"', i);
        if (q < 0) throw new RangeError('unterminated string');
        let b = q - 1;
        while (s.charCodeAt(b) === 92) b--;
        i = q + 1;
        if ((q - 1 - b) % 2 === 0) break; // an even run of backslashes: the quote ends the string
      }
      this.i = i;
      return;
    }
    if (c === 123 || c === 91) {
      const close = c === 123 ? 125 : 93;
      this.i++;
      this.ws();
      if (s.charCodeAt(this.i) === close) {
        this.i++;
        return;
      }
      for (;;) {
        if (c === 123) {
          this.str();
          this.ws();
          this.i++; // ':'
          this.ws();
        }
        this.value();
        this.ws();
        if (this.i >= s.length) throw new RangeError('unterminated value');
        if (s.charCodeAt(this.i++) === close) return; // else ','
        this.ws();
      }
    }
    // A number or a literal: up to the next delimiter.
    let i = this.i;
    for (
      let d = s.charCodeAt(i);
      d !== 44 && d !== 93 && d !== 125 && !(d < 128 && WS[d]) && i < s.length;
      d = s.charCodeAt(++i)
    );
    this.i = i;
  }

  /** The object at i: calls `at` for each key (positioned at its value; `at` must consume the value).
   *  false when a key repeats or has an escape. */
  object(at: (key: string) => boolean): boolean {
    const s = this.s;
    if (s.charCodeAt(this.i) !== 123) return false;
    this.i++;
    this.ws();
    if (s.charCodeAt(this.i) === 125) {
      this.i++;
      return true;
    }
    const seen = new Set<string>();
    for (;;) {
      const key = this.str();
      if (key === null || seen.has(key)) return false;
      seen.add(key);
      this.ws();
      this.i++; // ':'
      this.ws();
      if (!at(key)) return false;
      this.ws();
      if (this.i >= s.length) throw new RangeError('unterminated object');
      if (s.charCodeAt(this.i++) === 125) return true;
      this.ws();
    }
  }

  /** The array at i: each element's span, flat. null when the value is not an array. */
  spans(): number[] | null {
    const s = this.s;
    if (s.charCodeAt(this.i) !== 91) return null;
    const out: number[] = [];
    this.i++;
    this.ws();
    if (s.charCodeAt(this.i) === 93) {
      this.i++;
      return out;
    }
    for (;;) {
      const start = this.i;
      this.value();
      out.push(start, this.i);
      this.ws();
      if (this.i >= s.length) throw new RangeError('unterminated array');
      if (s.charCodeAt(this.i++) === 93) return out;
      this.ws();
    }
  }
}

/** The spans of the arrays under `lists` in the object at `path` (keys, or an index into an array),
 *  for those lists that are arrays there. undefined when the path is not there as written. */
export function listSpans(text: string, path: readonly (string | number)[], lists: readonly string[]): ListSpans | undefined {
  const scan = new Scan(text);
  const out: ListSpans = new Map();
  const want = new Set(lists);
  let found = false;
  const into = (depth: number): boolean => {
    scan.ws();
    if (depth === path.length) {
      found = true;
      return scan.object((key) => {
        if (want.has(key)) {
          const spans = scan.spans();
          if (spans) out.set(key, spans);
          else scan.value();
        } else scan.value();
        return true;
      });
    }
    const seg = path[depth];
    if (typeof seg === 'string')
      return scan.object((key) => {
        if (key === seg) return into(depth + 1);
        scan.value();
        return true;
      });
    const spans = scan.spans();
    if (!spans || spans.length / 2 <= seg) return false;
    // Go back into the element (arrays are small on the way down: a policy's specs).
    const end = scan.i;
    scan.i = spans[2 * seg];
    const ok = into(depth + 1);
    scan.i = end;
    return ok;
  };
  try {
    return into(0) && found ? out : undefined;
  } catch {
    return undefined; // not JSON as expected after all
  }
}
