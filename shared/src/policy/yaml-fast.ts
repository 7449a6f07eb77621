// Optional fast YAML reading. The `yaml` package (which the agent uses everywhere, and which maps
// errors to lines) reads ~0.5 MB/s: a 10,000-rule policy takes ~2 s. js-yaml reads the same in ~0.1-0.25 s.
// When js-yaml is installed it reads the values; `yaml` still reports syntax errors and locates every
// issue. Resolved at run time from the running program's location (works from source and from the
// esbuild bundles, and is simply absent otherwise).
import { createRequire } from 'node:module';
import path from 'node:path';

type LoadAll = (text: string) => unknown[];
let loader: LoadAll | null | undefined;

interface JsYaml {
  loadAll(text: string, iterator: (doc: unknown) => void, opts: { schema: unknown; json?: boolean }): void;
  CORE_SCHEMA: unknown;
}

/** js-yaml's loadAll with YAML 1.2 core schema semantics (like `yaml`), or null when not installed. */
export function fastLoadAll(): LoadAll | null {
  if (loader !== undefined) return loader;
  try {
    const req = createRequire(path.resolve(process.argv[1] ?? path.join(process.cwd(), 'x')));
    const name = 'js-yaml';
    const m = req(name) as JsYaml;
    loader = (text) => {
      const out: unknown[] = [];
      m.loadAll(
        text,
        (d) => {
          out.push(d);
        },
        { schema: m.CORE_SCHEMA },
      );
      return out;
    };
  } catch {
    loader = null;
  }
  return loader;
}

/** Aliases are where YAML gets dangerous (shared nodes expanded by whoever walks the tree): documents
 *  that use them go through `yaml`, which caps alias expansion. */
export function mayUseAliases(text: string): boolean {
  return /(^|[\s,[{:-])[*&][^\s,\]}]/m.test(text);
}
