// A strict parser for the Prometheus text exposition format 0.0.4, used to prove the metrics page is
// valid (tests) and to read values back (benchmark). Pure.

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface MetricFamily {
  name: string;
  type: 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';
  help?: string;
  samples: Sample[];
}

export class PromParseError extends Error {
  constructor(line: number, message: string) {
    super(`line ${line}: ${message}`);
    this.name = 'PromParseError';
  }
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

/** As Prometheus reads values (Go's strconv.ParseFloat): NaN and Inf in any case (prom-client
 *  writes "Nan" for an empty event-loop-lag histogram). */
function parseValue(text: string, line: number): number {
  const lower = text.toLowerCase();
  if (/^\+?inf(inity)?$/.test(lower)) return Infinity;
  if (/^-inf(inity)?$/.test(lower)) return -Infinity;
  if (lower === 'nan') return NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) throw new PromParseError(line, `bad value "${text}"`);
  return Number(text);
}

/** Family a sample belongs to (histogram/summary samples carry suffixes). */
function familyOf(name: string, families: Map<string, MetricFamily>): MetricFamily | undefined {
  if (families.has(name)) return families.get(name);
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (name.endsWith(suffix)) {
      const f = families.get(name.slice(0, -suffix.length));
      if (f && (f.type === 'histogram' || f.type === 'summary')) return f;
    }
  }
  return undefined;
}

function parseLabels(text: string, line: number): Record<string, string> {
  const labels: Record<string, string> = {};
  let i = 0;
  while (i < text.length) {
    const eq = text.indexOf('=', i);
    if (eq < 0) throw new PromParseError(line, `label without value in {${text}}`);
    const key = text.slice(i, eq).trim();
    if (!LABEL.test(key)) throw new PromParseError(line, `bad label name "${key}"`);
    if (text[eq + 1] !== '"') throw new PromParseError(line, `label ${key} value is not quoted`);
    let j = eq + 2,
      value = '';
    for (; j < text.length && text[j] !== '"'; j++) {
      if (text[j] === '\\') {
        const n = text[++j];
        if (n === 'n') value += '\n';
        else if (n === '\\' || n === '"') value += n;
        else throw new PromParseError(line, `bad escape \\${n} in label ${key}`);
      } else value += text[j];
    }
    if (j >= text.length) throw new PromParseError(line, `unterminated value of label ${key}`);
    if (key in labels) throw new PromParseError(line, `label ${key} repeated`);
    labels[key] = value;
    i = j + 1;
    if (text[i] === ',') i++;
    else if (i < text.length) throw new PromParseError(line, `expected , after label ${key}`);
  }
  return labels;
}

export function parsePrometheusText(text: string): Map<string, MetricFamily> {
  const families = new Map<string, MetricFamily>();
  const lines = text.split('\n');
  if (lines[lines.length - 1] !== '') throw new PromParseError(lines.length, 'the page must end with a newline');
  lines.forEach((raw, idx) => {
    const n = idx + 1;
    if (raw.trim() === '') return;
    if (raw.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(raw);
      if (!m) return; // other comments are allowed
      const [, kind, name, rest] = m;
      if (!NAME.test(name)) throw new PromParseError(n, `bad metric name "${name}"`);
      const fam = families.get(name) ?? { name, type: 'untyped' as const, samples: [] };
      if (kind === 'TYPE') {
        if (!TYPES.has(rest)) throw new PromParseError(n, `bad type "${rest}"`);
        if (fam.samples.length) throw new PromParseError(n, `TYPE of ${name} after its samples`);
        fam.type = rest as MetricFamily['type'];
      } else fam.help = rest;
      families.set(name, fam);
      return;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+(-?\d+))?$/.exec(raw);
    if (!m) throw new PromParseError(n, `not a sample: ${raw}`);
    const [, name, labelText, valueText] = m;
    const sample = { name, labels: labelText ? parseLabels(labelText, n) : {}, value: parseValue(valueText, n) };
    let fam = familyOf(name, families);
    if (!fam) {
      fam = { name, type: 'untyped', samples: [] };
      families.set(name, fam);
    }
    fam.samples.push(sample);
  });
  for (const fam of families.values()) if (fam.type === 'histogram') checkHistogram(fam);
  return families;
}

/** Buckets must be cumulative, end with le="+Inf", and that bucket must equal _count. */
function checkHistogram(fam: MetricFamily): void {
  const series = new Map<string, Sample[]>();
  for (const s of fam.samples) {
    const { le, ...rest } = s.labels;
    const key = JSON.stringify(rest);
    if (!series.has(key)) series.set(key, []);
    series.get(key)!.push(s);
  }
  for (const [key, samples] of series) {
    const buckets = samples.filter((s) => s.name === `${fam.name}_bucket`);
    const count = samples.find((s) => s.name === `${fam.name}_count`);
    if (!buckets.length || !count) throw new PromParseError(0, `histogram ${fam.name}${key} lacks buckets or _count`);
    for (let i = 1; i < buckets.length; i++) {
      if (buckets[i].value < buckets[i - 1].value)
        throw new PromParseError(0, `histogram ${fam.name} buckets are not cumulative`);
    }
    const last = buckets[buckets.length - 1];
    if (last.labels.le !== '+Inf' || last.value !== count.value)
      throw new PromParseError(0, `histogram ${fam.name}: +Inf bucket must equal _count`);
  }
}

/** Value of the first sample named `name` whose labels include the given ones, or undefined. */
export function sampleValue(
  families: Map<string, MetricFamily>,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  for (const fam of families.values()) {
    for (const s of fam.samples) {
      if (s.name !== name) continue;
      const keys = Object.keys(labels);
      if (keys.every((k) => s.labels[k] === labels[k])) return s.value;
    }
  }
  return undefined;
}
