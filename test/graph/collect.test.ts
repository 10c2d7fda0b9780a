import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseGraphText } from '../../src/frontends/load.js';
import { buildGraph } from '../../src/graph/build.js';
import { collectResources, type ExportEntry } from '../../src/graph/collect.js';
import { GRAPH_FILE, build, buildErrors, registry } from '../helpers/graph.js';

const graph = `resources:
  - { kind: file, name: /tmp/a/private, content: "mine" }
  - { kind: file, name: /tmp/a/shared-1, content: "for all", export: true }
  - { kind: file, name: /tmp/a/shared-2, content: "for b", export: [b] }
collect:
  - { kind: file, set: { path: "/tmp/in/{host}-{basename}" } }
`;

describe('export and collect', () => {
  test('exported resources are validated and published, not managed here', () => {
    const g = build(graph);
    assert.deepEqual([...g.vertices.keys()], ['file[/tmp/a/private]']);
    assert.deepEqual(
      g.exports.map((e) => [e.kind, e.name, e.to]),
      [
        ['file', '/tmp/a/shared-1', '*'],
        ['file', '/tmp/a/shared-2', ['b']],
      ],
    );
    assert.deepEqual(g.exports[0]?.params, { content: 'for all' }, 'published as written, defaults left to the collector');
    assert.equal(g.collect.length, 1);
  });

  test('an invalid exported resource is an error in its own file; an edge to an export is refused', () => {
    const errors = buildErrors(`resources:
  - { kind: file, name: relative, export: true }
  - { kind: noop, name: n, require: "file[/x]" }
  - { kind: file, name: /x, export: true }
  - { kind: noop, name: m, export: 42 }
collect:
  - { kind: file, frm: a }
`);
    const text = errors.map((e) => `${e.where?.line ?? 0}: ${e.message}`);
    assert.ok(text.some((t) => t.startsWith('2: ') && /must be an absolute path/.test(t)), text.join('\n'));
    assert.ok(text.some((t) => /file\[\/x\], which is exported, not managed on this host/.test(t)), text.join('\n'));
    assert.ok(text.some((t) => t.startsWith('5: ') && /"export" must be true/.test(t)), text.join('\n'));
    assert.ok(text.some((t) => t.startsWith('7: ') && /unknown collect key "frm"/.test(t)), text.join('\n'));
  });

  test('collection: addressed to this host, matching a rule, parameters rewritten per exporter', () => {
    const exports = build(graph).exports;
    const entries: ExportEntry[] = [
      ...exports.map((resource) => ({ host: 'a', resource })),
      { host: 'c', resource: { kind: 'file', name: '/tmp/c/shared-1', params: { content: 'from c' }, meta: undefined, to: '*' } },
      { host: 'c', resource: { kind: 'exec', name: 'x', params: { cmd: ['true'] }, meta: undefined, to: '*' } },
    ];
    const rules = build(graph).collect;
    const onB = collectResources('b', rules, entries);
    assert.deepEqual(
      onB.map((r) => [r.origin, r.name, r.params['path']]),
      [
        ['a', '/tmp/a/shared-1', '/tmp/in/a-shared-1'],
        ['a', '/tmp/a/shared-2', '/tmp/in/a-shared-2'],
        ['c', '/tmp/c/shared-1', '/tmp/in/c-shared-1'],
      ],
    );
    const onC = collectResources('c', rules, entries);
    assert.deepEqual(onC.map((r) => r.name), ['/tmp/a/shared-1', '/tmp/c/shared-1'], 'shared-2 is only for b; exec is not collected');
    // Collected resources build like local ones.
    const raw = parseGraphText(GRAPH_FILE, graph);
    const g = buildGraph({ ...raw, resources: [...raw.resources, ...onB] }, registry);
    assert.equal(g.vertices.size, 4);
    assert.equal((g.vertices.get('file[/tmp/c/shared-1]' as never)?.params as { path: string }).path, '/tmp/in/c-shared-1');
  });

  test('from limits the exporters collected from', () => {
    const g = build(`resources: []\ncollect:\n  - { kind: file, from: [c] }\n`);
    const entries: ExportEntry[] = [
      { host: 'a', resource: { kind: 'file', name: '/a', params: {}, meta: undefined, to: '*' } },
      { host: 'c', resource: { kind: 'file', name: '/c', params: {}, meta: undefined, to: '*' } },
    ];
    assert.deepEqual(collectResources('b', g.collect, entries).map((r) => r.name), ['/c']);
  });
});
