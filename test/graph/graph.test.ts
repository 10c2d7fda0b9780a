import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { toDot } from '../../src/graph/dot.js';
import { Graph, type Edge, type Vertex } from '../../src/graph/graph.js';
import type { ResourceId } from '../../src/graph/ids.js';
import { defaultMeta } from '../../src/graph/meta.js';
import { build, id } from '../helpers/graph.js';

const n = (name: string): ResourceId => id('noop', name);

/**
 *      a     e (alone)
 *     / \
 *    b   c ··> f   (c notifies f)
 *     \ /
 *      d
 */
const DIAMOND = `resources:
  - { kind: noop, name: d, require: [noop:b, noop:c] }
  - { kind: noop, name: b, require: [noop:a] }
  - { kind: noop, name: e }
  - { kind: noop, name: c, require: [noop:a], notify: [noop:f] }
  - { kind: noop, name: a }
  - { kind: noop, name: f }
`;

/** A graph made directly from ids and edges, for shapes a graph file cannot express or would make long. */
function rawGraph(names: readonly string[], edges: readonly [string, string][]): Graph {
  const vertices = new Map<ResourceId, Vertex>();
  for (const name of names) {
    vertices.set(n(name), { id: n(name), kind: 'noop', name, params: {}, meta: defaultMeta, loc: undefined, fingerprint: name });
  }
  const list: Edge[] = edges.map(([from, to]) => ({ from: n(from), to: n(to), notify: false, auto: false }));
  return new Graph(vertices, list, 'test');
}

function assertTopological(g: Graph, order: readonly ResourceId[]): void {
  assert.equal(order.length, g.vertices.size, 'every vertex appears once');
  assert.equal(new Set(order).size, order.length);
  const pos = new Map(order.map((v, i) => [v, i]));
  for (const e of g.edges) {
    assert.ok((pos.get(e.from) ?? -1) < (pos.get(e.to) ?? -1), `${e.from} must come before ${e.to} in ${order.join(', ')}`);
  }
}

describe('Graph.topoOrder', () => {
  test('every resource comes after everything it depends on', () => {
    const g = build(DIAMOND);
    assertTopological(g, g.topoOrder());
  });

  test('stable with respect to declaration order: independent resources keep the order they were written in', () => {
    const g = build(DIAMOND);
    assert.deepEqual(g.topoOrder(), [n('e'), n('a'), n('b'), n('c'), n('d'), n('f')]);
    const flat = build('resources:\n  - { kind: noop, name: z }\n  - { kind: noop, name: y }\n  - { kind: noop, name: x }\n');
    assert.deepEqual(flat.topoOrder(), [n('z'), n('y'), n('x')]);
  });

  test('an empty graph has an empty order', () => {
    assert.deepEqual(build('resources: []').topoOrder(), []);
  });

  test('a chain declared backwards comes out forwards', () => {
    const names = Array.from({ length: 50 }, (_, i) => `v${i}`);
    const g = rawGraph(
      [...names].reverse(),
      names.slice(1).map((v, i) => [names[i] as string, v]),
    );
    assert.deepEqual(g.topoOrder(), names.map(n));
  });

  test('10,000 resources in a chain are ordered (no recursion, no quadratic work)', () => {
    const names = Array.from({ length: 10_000 }, (_, i) => `v${i}`);
    const g = rawGraph(
      names,
      names.slice(1).map((v, i) => [names[i] as string, v]),
    );
    const t0 = performance.now();
    const order = g.topoOrder();
    const ms = performance.now() - t0;
    assertTopological(g, order);
    assert.ok(ms < 2000, `topoOrder of 10k took ${ms.toFixed(0)} ms`);
  });
});

describe('Graph.dependencies / dependents', () => {
  test('in-edges are what a resource depends on, out-edges what depends on it', () => {
    const g = build(DIAMOND);
    const from = (edges: readonly Edge[]): string[] => edges.map((e) => e.from).sort();
    const to = (edges: readonly Edge[]): string[] => edges.map((e) => e.to).sort();
    assert.deepEqual(from(g.dependencies(n('d'))), [n('b'), n('c')]);
    assert.deepEqual(to(g.dependents(n('a'))), [n('b'), n('c')]);
    assert.deepEqual(to(g.dependents(n('c'))), [n('d'), n('f')]);
    assert.equal(g.dependents(n('c')).find((e) => e.to === n('f'))?.notify, true);
    assert.deepEqual(g.dependencies(n('a')), []);
    assert.deepEqual(g.dependents(n('e')), []);
    assert.deepEqual(g.dependencies(n('nope')), []);
    assert.deepEqual(g.dependents(n('nope')), []);
  });

  test('dependentIds reads the ids of dependents() one at a time, in its order, built or given edges', () => {
    const ids = (g: Graph, of: ResourceId): ResourceId[] => {
      const l = g.dependentIds(of);
      return Array.from({ length: l.length }, (_, k) => l.at(k));
    };
    const built = build(DIAMOND);
    const given = rawGraph(['a', 'b', 'c', 'd'], [['a', 'b'], ['a', 'c'], ['c', 'd']]);
    for (const g of [built, given]) {
      for (const v of g.vertices.keys()) assert.deepEqual(ids(g, v), g.dependents(v).map((e) => e.to), v);
      assert.equal(g.dependentIds(n('nope')).length, 0);
    }
    // Before and after the list of edges is made (the built graph makes it when first asked for).
    const fresh = build(DIAMOND);
    const first = ids(fresh, n('a'));
    assert.deepEqual(first, fresh.dependents(n('a')).map((e) => e.to));
    assert.deepEqual(ids(fresh, n('a')), first);
    assert.throws(() => fresh.dependentIds(n('e')).at(0), RangeError);
  });
});

describe('Graph.downstream', () => {
  test('a root and everything that (transitively) depends on it', () => {
    const g = build(DIAMOND);
    assert.deepEqual(g.downstream([n('a')]), new Set([n('a'), n('b'), n('c'), n('d'), n('f')]));
    assert.deepEqual(g.downstream([n('c')]), new Set([n('c'), n('d'), n('f')]));
    assert.deepEqual(g.downstream([n('d')]), new Set([n('d')]));
    assert.deepEqual(g.downstream([n('e')]), new Set([n('e')]));
  });

  test('several roots give the union; what they depend on is not included', () => {
    const g = build(DIAMOND);
    assert.deepEqual(g.downstream([n('b'), n('f')]), new Set([n('b'), n('d'), n('f')]));
    assert.equal(g.downstream([n('b')]).has(n('a')), false);
  });

  test('unknown roots are ignored; no roots give nothing', () => {
    const g = build(DIAMOND);
    assert.deepEqual(g.downstream([n('ghost')]), new Set());
    assert.deepEqual(g.downstream([n('ghost'), n('d')]), new Set([n('d')]));
    assert.deepEqual(g.downstream([]), new Set());
  });

  test('any iterable works, and a long chain is walked without recursion', () => {
    const names = Array.from({ length: 10_000 }, (_, i) => `v${i}`);
    const g = rawGraph(
      names,
      names.slice(1).map((v, i) => [names[i] as string, v]),
    );
    const down = g.downstream(new Set([n('v5000')]));
    assert.equal(down.size, 5000);
    assert.ok(down.has(n('v9999')) && !down.has(n('v4999')));
  });
});

describe('toDot', () => {
  test('a digraph with a box per resource labelled kind[name] and an arrow per edge', () => {
    const dot = toDot(build(DIAMOND));
    const lines = dot.split('\n');
    assert.equal(lines[0], 'digraph backplane {');
    assert.ok(dot.endsWith('}\n'));
    for (const v of ['a', 'b', 'c', 'd', 'e', 'f']) assert.ok(lines.includes(`  "noop[${v}]" [label="noop[${v}]"];`), `vertex ${v}:\n${dot}`);
    assert.ok(lines.includes('  "noop[a]" -> "noop[b]";'));
    assert.ok(lines.includes('  "noop[c]" -> "noop[d]";'));
    assert.equal(lines.filter((l) => l.includes('->')).length, 5);
  });

  test('notify edges are dashed and labelled; automatic edges are grey', () => {
    const dot = toDot(build(DIAMOND));
    assert.ok(dot.includes('  "noop[c]" -> "noop[f]" [style=dashed, label="notify"];'), dot);
    const auto = toDot(build('resources:\n  - { kind: file, name: /etc/app, type: directory }\n  - { kind: file, name: /etc/app/x }\n'));
    assert.ok(auto.includes('  "file[/etc/app]" -> "file[/etc/app/x]" [color="#999999"];'), auto);
  });

  test('states fill the boxes and appear in the label; an unknown state only labels', () => {
    const g = build(DIAMOND);
    const states = new Map<ResourceId, string>([
      [n('a'), 'converged'],
      [n('b'), 'failed'],
      [n('c'), 'running'],
      [n('d'), 'blocked'],
      [n('e'), 'something-new'],
    ]);
    const lines = toDot(g, states).split('\n');
    assert.ok(lines.includes('  "noop[a]" [label="noop[a]\\nconverged", fillcolor="#a1d99b"];'), lines.join('\n'));
    assert.ok(lines.includes('  "noop[b]" [label="noop[b]\\nfailed", fillcolor="#fc9272"];'));
    assert.ok(lines.includes('  "noop[c]" [label="noop[c]\\nrunning", fillcolor="#9ecae1"];'));
    assert.ok(lines.includes('  "noop[e]" [label="noop[e]\\nsomething-new"];'));
    assert.ok(lines.includes('  "noop[f]" [label="noop[f]"];'));
  });

  test('quotes and backslashes in names are escaped so the output stays valid dot', () => {
    const g = build(`resources:
  - kind: print
    name: 'say "hi"'
    msg: x
  - kind: noop
    name: 'C:\\dir'
    require: ['print[say "hi"]']
`);
    const dot = toDot(g);
    assert.ok(dot.includes('  "print[say \\"hi\\"]" [label="print[say \\"hi\\"]"];'), dot);
    assert.ok(dot.includes('  "noop[C:\\\\dir]" [label="noop[C:\\\\dir]"];'), dot);
    assert.ok(dot.includes('  "print[say \\"hi\\"]" -> "noop[C:\\\\dir]";'), dot);
    // Outside of quoted strings nothing but dot syntax: every quote is balanced on every line.
    for (const line of dot.split('\n')) assert.equal((line.replace(/\\./g, '').match(/"/g) ?? []).length % 2, 0, line);
  });

  test('an empty graph is still a valid digraph', () => {
    assert.equal(
      toDot(build('resources: []')),
      'digraph backplane {\n  rankdir=LR;\n  node [shape=box, style="rounded,filled", fontname="Helvetica", fillcolor="#ffffff"];\n}\n',
    );
  });
});
