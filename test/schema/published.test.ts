import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { graphJsonSchema } from '../../src/frontends/json-schema.js';
import { builtinKinds } from '../../src/resources/registry.js';
import { ROOT } from '../helpers/cli.js';

test('the published JSON Schema (schema/graph.schema.json) matches the kinds the agent knows', async () => {
  const published: unknown = JSON.parse(await readFile(join(ROOT, 'schema', 'graph.schema.json'), 'utf8'));
  assert.deepEqual(published, graphJsonSchema(builtinKinds), 'schema/graph.schema.json is stale: run `npm run schema`');
});
