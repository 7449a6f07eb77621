// The node_modules an installed bundle needs at run time: the packages esbuild leaves external
// (read from the bundles themselves, so the build's list is the only list) and everything they
// depend on, found the way Node resolves them, as paths relative to the repository.
import { builtinModules } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const BUILTIN = new Set(builtinModules);

/** Package names a CommonJS bundle requires or imports on demand (`await import("x")`, which
 *  esbuild keeps as written) that are not Node built-ins. */
export function externalRequires(bundleText: string): string[] {
  const names = new Set<string>();
  for (const m of bundleText.matchAll(/\b(?:require|import)\("([^"./][^"]*)"\)/g)) {
    const spec = m[1];
    if (spec.startsWith('node:') || BUILTIN.has(spec) || BUILTIN.has(spec.split('/')[0])) continue;
    const parts = spec.split('/');
    names.add(spec.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]);
  }
  return [...names].sort();
}

/** `name` as Node finds it from `fromDir` (walking up to `repo`), or undefined. */
function resolvePackage(repo: string, fromDir: string, name: string): string | undefined {
  for (let dir = fromDir; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'node_modules', name);
    if (fs.existsSync(path.join(candidate, 'package.json'))) return candidate;
    if (dir === repo || dir === path.dirname(dir)) return undefined;
  }
}

/**
 * Package directories (relative to `repo`, e.g. node_modules/koffi) for `roots` and their
 * dependencies, optional ones when installed. A missing required one is an error naming who needs it.
 */
export function dependencyClosure(repo: string, roots: string[]): string[] {
  const seen = new Set<string>();
  const queue: { from: string; name: string; by: string; optional: boolean }[] = roots.map((name) => ({
    from: repo,
    name,
    by: 'the bundles',
    optional: false,
  }));
  while (queue.length) {
    const { from, name, by, optional } = queue.shift()!;
    const dir = resolvePackage(repo, from, name);
    if (!dir) {
      if (optional) continue;
      throw new Error(`${name} (needed by ${by}) is not in node_modules: run npm ci`);
    }
    const rel = path.relative(repo, dir);
    if (seen.has(rel)) continue;
    seen.add(rel);
    const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
    for (const dep of Object.keys(pkg.dependencies ?? {})) queue.push({ from: dir, name: dep, by: name, optional: false });
    for (const dep of Object.keys(pkg.optionalDependencies ?? {})) queue.push({ from: dir, name: dep, by: name, optional: true });
  }
  return [...seen].sort();
}

/** Copies each package directory to the same relative place under `dest` (without its nested
 *  node_modules: those that are needed are in the list themselves). */
export function copyPackages(repo: string, rels: string[], dest: string): void {
  for (const rel of rels) {
    const src = path.join(repo, rel);
    fs.cpSync(src, path.join(dest, rel), {
      recursive: true,
      dereference: true,
      filter: (s) => s === src || !path.relative(src, s).split(path.sep).includes('node_modules'),
    });
  }
}
