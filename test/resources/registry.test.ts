import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { ValidationErrors } from '../../src/errors.js';
import { buildGraph } from '../../src/graph/build.js';
import type { RawGraph } from '../../src/graph/raw.js';
import { builtinKindNames, createRegistry, isBuiltinRegistry, KindNotLoadedError, kindsOf, loadBuiltinKinds } from '../../src/resources/registry.js';

/** A graph of one resource of `kind`, with no parameters. */
function graphOf(kind: string): RawGraph {
  const loc = { file: 'g.yaml', line: 1, col: 1 };
  return { source: 'g.yaml', resources: [{ kind, name: 'a', params: {}, meta: {}, loc, locate: () => loc, locateMeta: () => loc }], edges: [], errors: [] };
}

// Its own process (node --test runs each file in one): nothing has loaded a kind before these tests, which rely on
// running in this order.

test('the built-in registry knows every kind by name before loading any, and loads a kind only when prepared for it', async () => {
  const registry = createRegistry();
  assert.ok(isBuiltinRegistry(registry));
  assert.deepEqual([...registry.names()].sort(), [...builtinKindNames].sort());
  assert.equal(registry.get('file')?.kind, 'file');
  assert.equal(registry.get('no-such-kind'), undefined);
  // Not loaded yet: an error that names the bug, not an "unknown kind" that would blame the graph.
  assert.throws(() => registry.get('svc'), KindNotLoadedError);
  const raw = graphOf('noop');
  assert.throws(() => buildGraph(raw, registry), KindNotLoadedError);
  await registry.prepare(kindsOf(raw));
  assert.equal(registry.get('noop')?.kind, 'noop');
  assert.throws(() => registry.get('svc'), KindNotLoadedError, 'preparing noop loaded svc as well');
  // An unknown kind still gets every kind's name, loaded or not.
  assert.throws(
    () => buildGraph(graphOf('svcc'), registry),
    (err: ValidationErrors) => err.errors.length === 1 && /did you mean "svc"\? known kinds: exec, file, group, hostname, http, kv, msg, noop, pkg, print, svc, tcp, template, timer, user/.test(err.errors[0]?.hint ?? ''),
  );
  await registry.prepare(['svc', 'svc', 'no-such-kind']);
  assert.equal(registry.get('svc')?.kind, 'svc');
});

test('the statically imported list is the registry\'s, in the same order, the very same kinds', async () => {
  const { builtinKinds } = await import('../../src/resources/builtin-kinds.js');
  const loaded = await loadBuiltinKinds();
  assert.deepEqual(builtinKinds.map((k) => k.kind), [...builtinKindNames]);
  assert.deepEqual(loaded.map((k) => k.kind), [...builtinKindNames]);
  loaded.forEach((k, i) => assert.equal(k, builtinKinds[i], k.kind));
  // A registry of given kinds is another registry (the validated-graph cache is only for the built-in one).
  assert.ok(!isBuiltinRegistry(createRegistry(builtinKinds)));
});
