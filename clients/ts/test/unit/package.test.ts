/**
 * The built package (`dist/`, made by `npm run build` before the tests):
 * its entries exist, the core imports nothing outside itself (no React,
 * no `flatbuffers`: its runtime is vendored), the binary form's code is
 * only reached by a dynamic import, and only the React entry imports `react`.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
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

/** The specifiers of static imports and re-exports only. */
function staticSpecifiers(code: string): string[] {
  return specifiers(code.replace(/\bimport\s*\(\s*['"][^'"]+['"]\s*\)/g, ''));
}

/** Every module reachable from `entry` by relative imports, and the bare specifiers they import. */
function graph(entry: string, only: (code: string) => string[] = specifiers): { files: string[]; bare: Set<string> } {
  const files: string[] = [];
  const bare = new Set<string>();
  const todo = [entry];
  while (todo.length > 0) {
    const file = todo.pop() as string;
    if (files.includes(file)) continue;
    files.push(file);
    for (const s of only(readFileSync(file, 'utf8'))) {
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
  devDependencies: Record<string, string>;
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

test('the core entry imports nothing outside the package (no React, no flatbuffers)', () => {
  const core = graph(join(ROOT, 'dist/index.js'));
  assert.ok(core.files.length > 5, `followed ${core.files.length} modules`);
  assert.deepEqual([...core.bare], []);
  assert.ok(!core.files.some((f) => f.endsWith('react.js')));
  // The binary form (its generated tables and the vendored runtime) is reached through a dynamic import only.
  assert.ok(core.files.some((f) => f.endsWith(join('dist', 'binary-codec.js'))));
  assert.ok(core.files.some((f) => f.endsWith(join('vendor', 'flatbuffers', 'builder.js'))));
  const eager = graph(join(ROOT, 'dist/index.js'), staticSpecifiers);
  assert.ok(eager.files.length > 5);
  assert.deepEqual(
    eager.files.filter((f) => /binary-codec|[/\\]fb[/\\]|vendor/.test(f)),
    [],
    'a JSON-only client loads none of it',
  );
});

test('the vendored flatbuffers runtime is the pinned devDependency\'s TypeScript, unchanged', () => {
  const version = pkg.devDependencies.flatbuffers ?? '';
  assert.match(version, /^25\.\d+\.\d+$/, 'pinned, and of the 25.x line as flatc 25.12.19');
  const vendored = join(ROOT, 'src/vendor/flatbuffers');
  const upstream = join(ROOT, 'node_modules/flatbuffers');
  const installed = JSON.parse(readFileSync(join(upstream, 'package.json'), 'utf8')) as { version: string };
  assert.equal(installed.version, version);
  const files = readdirSync(vendored).filter((f) => f.endsWith('.ts'));
  assert.ok(files.includes('builder.ts') && files.includes('byte-buffer.ts'));
  for (const f of files) {
    assert.equal(readFileSync(join(vendored, f), 'utf8'), readFileSync(join(upstream, 'ts', f), 'utf8'), f);
  }
  assert.equal(readFileSync(join(vendored, 'LICENSE'), 'utf8'), readFileSync(join(upstream, 'LICENSE'), 'utf8'));
  // The generated code imports the vendored copy, never the npm package.
  const generated = readdirSync(join(ROOT, 'src/fb/wsedge/proto')).map((f) => readFileSync(join(ROOT, 'src/fb/wsedge/proto', f), 'utf8'));
  assert.ok(generated.length > 40);
  assert.ok(generated.every((code) => !code.includes("from 'flatbuffers'")));
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
