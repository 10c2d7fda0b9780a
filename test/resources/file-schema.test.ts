import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileSchema, quickFileParams } from '../../src/resources/file-schema.js';
import { fileKind } from '../../src/resources/file.js';
import { buildGraph } from '../../src/graph/build.js';
import { builtinKinds } from '../../src/resources/builtin-kinds.js';
import { createRegistry } from '../../src/resources/registry.js';
import { ValidationErrors } from '../../src/errors.js';
import { resourceId } from '../../src/graph/ids.js';
import { pathProblem } from '../../src/graph/schema-util.js';

/** Values each quick key is tried with: good ones, wrong types, edge cases of each check. */
const VALUES: Record<string, readonly unknown[]> = {
  path: ['/a/b', '/', '/a/', '//a//b', 'rel/x', '', '/a/../b', '/a/..b', '/a/..', '/a\0b', '/\uD800', `/${'x'.repeat(256)}`, `/${'a/'.repeat(2100)}`, 5, null],
  state: ['exists', 'absent', 'gone', 1, null],
  type: ['file', 'directory', 'symlink', 'fifo', null],
  content: ['x', '', 'héllo\n', 3, null],
  mode: ['0644', '644', '4755', '0o755', ' 0644 ', 'u=rw,go=r', 'a+x', '648', '0x1a4', 420, 0o7777, 0o10000, -1, 1.5, Number.NaN, '', null],
};

function schemaAnswer(name: string, params: Record<string, unknown>): unknown {
  const r = fileSchema().safeParse({ path: name, ...params });
  return r.success ? r.data : undefined;
}

function check(name: string, params: Record<string, unknown>): void {
  const quick = quickFileParams(name, params);
  if (quick === undefined) return; // the schema decides: nothing to compare
  const want = schemaAnswer(name, params);
  assert.deepEqual(quick, want, `quick params differ from the schema's for ${name} ${JSON.stringify(params)}`);
  // The same keys in the same order: the vertex's params are what the schema would have made, byte for byte.
  assert.deepEqual(Object.keys(quick), Object.keys(want as object));
}

test('quickFileParams: every answer it gives is the schema output, for single keys and pairs of keys', () => {
  const keys = Object.keys(VALUES);
  let answered = 0;
  for (const name of ['/srv/x', 'rel', '/a/../b']) {
    check(name, {});
    for (const k of keys) {
      for (const v of VALUES[k] ?? []) {
        check(name, { [k]: v });
        if (quickFileParams(name, { [k]: v }) !== undefined) answered++;
        for (const k2 of keys) {
          if (k2 <= k) continue;
          for (const v2 of VALUES[k2] ?? []) check(name, { [k]: v, [k2]: v2 });
        }
      }
    }
  }
  // It must actually answer the common shapes, or it saves nothing.
  assert.ok(answered > 20, `answered only ${answered}`);
  assert.notEqual(quickFileParams('/srv/f', { content: 'x\n', mode: '0644' }), undefined);
  assert.notEqual(quickFileParams('/srv', { type: 'directory' }), undefined);
});

test('quickFileParams: leaves to the schema what it does not check itself', () => {
  for (const params of [
    { owner: 'root' },
    { purge: true, type: 'directory' },
    { source: '/x' },
    { type: 'symlink', target: '/x' },
    { content: undefined },
    { contnet: 'typo' },
    { content: 'x', type: 'directory' },
  ] as Record<string, unknown>[]) {
    assert.equal(quickFileParams('/srv/f', params), undefined, JSON.stringify(params));
  }
});

test('the file kind is validated through the shortcut, and a bad file still fails the whole build', () => {
  assert.deepEqual(fileKind.quickParams?.('/srv/a', { content: 'x' }), quickFileParams('/srv/a', { content: 'x' }));
  const loc = { file: 'g.yaml', line: 1, col: 1 };
  const res = (name: string, params: Record<string, unknown>) => ({ kind: 'file', name, params, meta: undefined, loc, locate: () => loc, locateMeta: () => loc });
  const ok = buildGraph({ source: 'g.yaml', resources: [res('/srv/a', { content: 'x', mode: '0644' })], edges: [], errors: [] }, createRegistry(builtinKinds));
  assert.deepEqual(ok.vertices.get(resourceId('file', '/srv/a'))?.params, schemaAnswer('/srv/a', { content: 'x', mode: '0644' }));
  assert.throws(
    () => buildGraph({ source: 'g.yaml', resources: [res('/srv/a', { content: 'x' }), res('/srv/b', { mode: '0648' })], edges: [], errors: [] }, createRegistry(builtinKinds)),
    (err: unknown) => err instanceof ValidationErrors && /0648/.test(err.message),
  );
});

test('pathProblem: the plain-ASCII shortcut still refuses what cannot name a file', () => {
  assert.equal(pathProblem('/srv/a'), undefined);
  assert.equal(pathProblem(`/${'x'.repeat(254)}`), undefined);
  assert.match(pathProblem('/a\0b') ?? '', /NUL/);
  assert.match(pathProblem(`/${'x'.repeat(256)}`) ?? '', /NAME_MAX/);
  assert.match(pathProblem(`/${'a/'.repeat(2100)}`) ?? '', /PATH_MAX/);
  assert.match(pathProblem('/\uD800') ?? '', /surrogate/);
  assert.equal(pathProblem('/é'), undefined);
  assert.match(pathProblem(`/${'é'.repeat(128)}`) ?? '', /NAME_MAX/);
});
