import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SHARED_DEFAULT_META } from '../../src/graph/build.js';
import { defaultMeta, META_DEFAULTS, metaSchema } from '../../src/graph/meta.js';

// The meta of a resource that declares none is known without building the schema (zod stays unloaded in such runs:
// test/cli/startup.test.ts); it must be exactly what the schema gives.
test('the default meta is what the meta schema makes of no meta', () => {
  assert.deepEqual(META_DEFAULTS, metaSchema().parse(undefined));
  assert.deepEqual(SHARED_DEFAULT_META, metaSchema().parse(undefined));
  assert.deepEqual(defaultMeta, metaSchema().parse(undefined));
  assert.ok(Object.isFrozen(SHARED_DEFAULT_META) && Object.isFrozen(SHARED_DEFAULT_META.sema));
  // Each parse of no meta is a fresh object: a vertex's meta is never another's.
  assert.notEqual(metaSchema().parse(undefined), metaSchema().parse(undefined));
  assert.notEqual(metaSchema().parse(undefined).sema, META_DEFAULTS.sema);
});
