/**
 * The built package (`dist/`, made by `npm run build` before the tests):
 * its entries exist, the core imports nothing outside itself (no React),
 * and only the React entry imports `react`.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/** The specifiers of every static and dynamic import in a module's text. */
function specifiers(code: string): string[] {
  const out: string[] = [];
  for (const m of code.matchAll(/(?:^|[\s;}])(?:import|export)\b[^'"`;]*?\bfrom\s*['"]([^'"]+)['"]/g)) out.push(m[1] as string);
  for (const m of code.matchAll(/(?:^|[\s;}])import\s*['"]([^'"]+)['"]/g)) out.push(m[1] as string);
  for (const m of code.matchAll(/\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g)) out.push(m[1] as string);
  return out;
}

/** Every module reachable from `entry` by relative imports, and the bare specifiers they import. */
function graph(entry: string): { files: string[]; bare: Set<string> } {
  const files: string[] = [];
  const bare = new Set<string>();
  const todo = [entry];
  while (todo.length > 0) {
    const file = todo.pop() as string;
    if (files.includes(file)) continue;
    files.push(file);
    for (const s of specifiers(readFileSync(file, 'utf8'))) {
      if (s.startsWith('.')) todo.push(join(dirname(file), s));
      else bare.add(s);
    }
  }
  return { files, bare };
}

const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  exports: Record<string, { types: string; import: string }>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
  dependencies?: Record<string, string>;
};

test('every export of package.json points at built files', () => {
  assert.deepEqual(Object.keys(pkg.exports), ['.', './react']);
  for (const [name, e] of Object.entries(pkg.exports)) {
    assert.ok(existsSync(join(ROOT, e.import)), `${name}: ${e.import} (run npm run build)`);
    assert.ok(existsSync(join(ROOT, e.types)), `${name}: ${e.types}`);
  }
  assert.equal(pkg.dependencies, undefined, 'no runtime dependencies');
  assert.equal(pkg.peerDependencies?.react, '>=18');
  assert.equal(pkg.peerDependenciesMeta?.react?.optional, true);
});

test('the core entry imports nothing outside the package (no React)', () => {
  const core = graph(join(ROOT, 'dist/index.js'));
  assert.ok(core.files.length > 5, `followed ${core.files.length} modules`);
  assert.deepEqual([...core.bare], []);
  assert.ok(!core.files.some((f) => f.endsWith('react.js')));
});

test('the React entry imports react and nothing else from outside', () => {
  const r = graph(join(ROOT, 'dist/react.js'));
  assert.deepEqual([...r.bare], ['react']);
});

test('the package resolves by its own name, both entries', async () => {
  const core = (await import('@wsedge/client')) as Record<string, unknown>;
  const react = (await import('@wsedge/client/react')) as Record<string, unknown>;
  assert.equal(typeof core.Client, 'function');
  assert.equal(typeof core.Story, 'function');
  for (const name of ['RealtimeProvider', 'useClient', 'useRealtime', 'useSubscription', 'usePresence', 'useStory']) {
    assert.equal(typeof react[name], 'function', name);
  }
});
