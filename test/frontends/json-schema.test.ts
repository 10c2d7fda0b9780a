import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { graphJsonSchema } from '../../src/frontends/json-schema.js';
import { builtinKinds } from '../../src/resources/builtin-kinds.js';
import { allKinds, build } from '../helpers/graph.js';

type Json = Record<string, unknown>;

function obj(v: unknown, what: string): Json {
  assert.ok(v !== null && typeof v === 'object' && !Array.isArray(v), `${what} is not an object: ${JSON.stringify(v)}`);
  return v as Json;
}

function variants(schema: Json): Json[] {
  const resources = obj(obj(schema['properties'], 'properties')['resources'], 'resources');
  assert.equal(resources['type'], 'array');
  const oneOf = obj(resources['items'], 'items')['oneOf'];
  assert.ok(Array.isArray(oneOf));
  return oneOf.map((v, i) => obj(v, `variant ${i}`));
}

function variantFor(schema: Json, kind: string): Json {
  const v = variants(schema).find((x) => obj(obj(x['properties'], 'properties')['kind'], 'kind')['const'] === kind);
  assert.ok(v !== undefined, `no variant for ${kind}`);
  return v;
}

const props = (v: Json): Json => obj(v['properties'], 'properties');

describe('graphJsonSchema', () => {
  const schema = graphJsonSchema(builtinKinds);

  test('a 2020-12 schema for an object with a resources list and nothing else', () => {
    assert.equal(schema['$schema'], 'https://json-schema.org/draft/2020-12/schema');
    assert.equal(typeof schema['$id'], 'string');
    assert.equal(schema['type'], 'object');
    assert.equal(schema['additionalProperties'], false);
    assert.deepEqual(Object.keys(props(schema)), ['resources', 'collect']);
  });

  test('one variant per kind, in registry order, each pinned by a kind const', () => {
    const vs = variants(schema);
    assert.equal(vs.length, builtinKinds.length);
    assert.deepEqual(
      vs.map((v) => obj(props(v)['kind'], 'kind')['const']),
      builtinKinds.map((k) => k.kind),
    );
    for (const [i, v] of vs.entries()) {
      assert.equal(v['type'], 'object');
      assert.equal(v['additionalProperties'], false);
      assert.equal(v['description'], builtinKinds[i]?.description);
    }
  });

  test('every variant has name, the relations and meta besides its parameters', () => {
    for (const v of variants(schema)) {
      const p = props(v);
      for (const key of ['kind', 'name', 'require', 'before', 'notify', 'subscribe', 'meta', 'export']) assert.ok(key in p, `${key} missing`);
      assert.deepEqual(obj(p['require'], 'require')['type'], ['string', 'array']);
      const required = v['required'];
      assert.ok(Array.isArray(required));
      assert.deepEqual(required.slice(0, 2), ['kind', 'name']);
    }
  });

  test('the parameters of each kind, with their descriptions, and which of them are required', () => {
    const exec = variantFor(schema, 'exec');
    const execParams = Object.keys(props(exec)).filter((k) => !['kind', 'name', 'require', 'before', 'notify', 'subscribe', 'meta', 'export'].includes(k));
    assert.deepEqual(execParams.sort(), ['cmd', 'creates', 'cwd', 'env', 'onlyif', 'refreshOnly', 'shell', 'timeout', 'unless', 'watch']);
    assert.deepEqual(exec['required'], ['kind', 'name', 'cmd']);
    assert.match(String(obj(props(exec)['cmd'], 'cmd')['description']), /argv array/);

    const print = variantFor(schema, 'print');
    assert.deepEqual(obj(props(print)['msg'], 'msg')['type'], 'string');
    assert.deepEqual(print['required'], ['kind', 'name', 'msg']);

    assert.deepEqual(variantFor(schema, 'timer')['required'], ['kind', 'name', 'interval']);
    assert.deepEqual(variantFor(schema, 'noop')['required'], ['kind', 'name']);
  });

  test('a parameter that defaults from the name (file path) is not required', () => {
    const file = variantFor(graphJsonSchema(allKinds), 'file');
    assert.ok('path' in props(file));
    assert.ok('content' in props(file));
    assert.deepEqual(file['required'], ['kind', 'name']);
    assert.deepEqual(obj(props(file)['state'], 'state')['enum'], ['exists', 'absent']);
  });

  test('meta describes the metaparams as written (durations as numbers or strings)', () => {
    const meta = obj(props(variantFor(schema, 'noop'))['meta'], 'meta');
    assert.equal('$schema' in meta, false, 'no nested $schema');
    assert.equal(meta['additionalProperties'], false);
    const m = props(meta);
    assert.deepEqual(Object.keys(m).sort(), ['autoedge', 'burst', 'delay', 'limit', 'noop', 'poll', 'retry', 'sema']);
    assert.equal(obj(m['retry'], 'retry')['minimum'], -1);
    const delayTypes = (obj(m['delay'], 'delay')['anyOf'] as Json[]).map((x) => x['type']).sort();
    assert.deepEqual(delayTypes, ['number', 'string']);
    assert.equal(obj(obj(m['sema'], 'sema')['items'], 'sema items')['pattern'], '^[^:]+(:\\d+)?$');
  });

  test('survives a JSON round trip unchanged (nothing unrepresentable in it)', () => {
    assert.deepEqual(JSON.parse(JSON.stringify(schema)), schema);
  });

  test('every key of a graph the agent accepts is allowed by the schema', () => {
    const text = `resources:
  - kind: exec
    name: build
    cmd: [make]
    cwd: /srv
    env: { A: "1" }
    timeout: 10s
    watch: { files: [/srv/Makefile] }
    meta: { retry: 2, delay: 250ms, sema: ["cpu:2"] }
  - kind: print
    name: done
    msg: built
    require: [exec:build]
  - kind: timer
    name: tick
    interval: 1m
    notify: "exec[build]"
  - kind: noop
    name: join
    subscribe: [print:done]
    before: []
`;
    build(text); // the agent accepts it
    const doc = obj(parseYaml(text), 'document');
    const resources = doc['resources'];
    assert.ok(Array.isArray(resources));
    for (const r of resources) {
      const item = obj(r, 'resource');
      const v = variantFor(schema, String(item['kind']));
      for (const key of Object.keys(item)) assert.ok(key in props(v), `${String(item['kind'])}: "${key}" not in the schema`);
      const required = v['required'] as string[];
      for (const key of required) assert.ok(key in item, `${String(item['kind'])}: required "${key}" missing`);
      const meta = item['meta'];
      if (meta !== undefined) {
        const metaProps = props(obj(props(v)['meta'], 'meta'));
        for (const key of Object.keys(obj(meta, 'meta'))) assert.ok(key in metaProps, `meta ${key}`);
      }
    }
  });

  test('collect rules: per kind, set holds its parameters and take names them', () => {
    const collect = obj(props(schema)['collect'], 'collect');
    const rules = obj(collect['items'], 'items')['oneOf'];
    assert.ok(Array.isArray(rules));
    const file = rules.map((r) => obj(r, 'rule')).find((r) => obj(props(r)['kind'], 'kind')['const'] === 'file');
    assert.ok(file !== undefined);
    assert.deepEqual(Object.keys(props(file)), ['kind', 'from', 'set', 'take']);
    assert.equal(file['additionalProperties'], false);
    const take = obj(obj(props(file)['take'], 'take')['items'], 'take items')['enum'];
    assert.ok(Array.isArray(take) && take.includes('source') && take.includes('content') && !take.includes('require'));
    assert.ok('path' in props(obj(props(file)['set'], 'set')));
  });

  test('a schema for no kinds has no variants', () => {
    assert.deepEqual(variants(graphJsonSchema([])), []);
  });
});
