import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { graphJsonSchema } from '../../src/frontends/json-schema.js';
import { builtinKinds } from '../../src/resources/builtin-kinds.js';
import { ROOT } from '../helpers/cli.js';

test('the published JSON Schema (schema/graph.schema.json) matches the kinds the agent knows', async () => {
  const published: unknown = JSON.parse(await readFile(join(ROOT, 'schema', 'graph.schema.json'), 'utf8'));
  assert.deepEqual(published, graphJsonSchema(builtinKinds), 'schema/graph.schema.json is stale: run `npm run schema`');
});

test('the published OpenAPI document of the operator API (docs/api.openapi.json) matches the op table', async () => {
  const { openApiDocument } = await import('../../src/api/openapi.js');
  const { OPS } = await import('../../src/api/ops/index.js');
  const published: unknown = JSON.parse(await readFile(join(ROOT, 'docs', 'api.openapi.json'), 'utf8'));
  assert.deepEqual(published, JSON.parse(JSON.stringify(openApiDocument(OPS))), 'docs/api.openapi.json is stale: run `npm run openapi`');
});
