// Output for people (table, key: value) and for programs (json, yaml), the way cilium-dbg and hubble
// print: `-o json|yaml|table` on every listing verb, `--no-headers` for tables. Pure.
import { Option } from 'commander';
import { stringify } from 'yaml';

export type OutputFormat = 'json' | 'yaml' | 'table';

export const outputOption = (extra: string[] = []) =>
  new Option('-o, --output <format>', `output format: json, yaml, table${extra.length ? `, ${extra.join(', ')}` : ''}`)
    .choices(['json', 'yaml', 'table', ...extra])
    .default('table');

export function table(headers: string[], rows: string[][], showHeaders = true): string {
  const all = showHeaders ? [headers, ...rows] : rows;
  if (!all.length) return '';
  const widths = headers.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  return all.map(line).join('\n') + '\n';
}

/** Tables print container and endpoint ids (64 hex) as Docker does: their first 12 characters. */
export function shortIds(text: string): string {
  return text.replace(/\b([0-9a-f]{12})[0-9a-f]{52}\b/g, '$1');
}

export function labelsText(labels: Record<string, string>): string {
  const entries = Object.entries(labels);
  return entries.length ? entries.map(([k, v]) => (v === '' ? k : `${k}=${v}`)).join(',') : '-';
}

export function keyValues(pairs: [string, string][]): string {
  const w = Math.max(...pairs.map(([k]) => k.length));
  return pairs.map(([k, v]) => `${(k + ':').padEnd(w + 1)} ${v}`).join('\n') + '\n';
}

/** json and yaml print the data itself; anything else prints `text()`. */
export function render(output: string, data: unknown, text: () => string): string {
  if (output === 'json') return JSON.stringify(data, null, 2) + '\n';
  if (output === 'yaml') return stringify(data);
  return text();
}

export function print(text: string): void {
  process.stdout.write(text);
}

export function printTable(output: string, data: unknown, headers: string[], rows: string[][], showHeaders = true): void {
  print(render(output, data, () => table(headers, rows, showHeaders)));
}
