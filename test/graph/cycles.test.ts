import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { findCycles } from '../../src/graph/cycles.js';
import type { ResourceId } from '../../src/graph/ids.js';
import { GRAPH_FILE, buildErrors, id, onlyError, where } from '../helpers/graph.js';

/** A successor function over `noop[x]` ids from a compact edge list: ['a>b', 'b>c']. */
function graph(edges: readonly string[]): { ids: ResourceId[]; next: (v: ResourceId) => readonly ResourceId[] } {
  const succ = new Map<ResourceId, ResourceId[]>();
  const ids: ResourceId[] = [];
  const add = (v: ResourceId): void => {
    if (!succ.has(v)) {
      succ.set(v, []);
      ids.push(v);
    }
  };
  for (const e of edges) {
    const [from, to] = e.split('>');
    assert.ok(from !== undefined && to !== undefined);
    const a = id('noop', from);
    const b = id('noop', to);
    add(a);
    add(b);
    succ.get(a)?.push(b);
  }
  return { ids, next: (v) => succ.get(v) ?? [] };
}

/** Every step of a reported cycle must be a real edge, and it must end where it started. */
function assertIsCycle(cycle: readonly ResourceId[], next: (v: ResourceId) => readonly ResourceId[]): void {
  assert.ok(cycle.length >= 2, `too short: ${cycle.join(' -> ')}`);
  assert.equal(cycle[0], cycle[cycle.length - 1], `does not close: ${cycle.join(' -> ')}`);
  for (let i = 0; i + 1 < cycle.length; i++) {
    const from = cycle[i] as ResourceId;
    const to = cycle[i + 1] as ResourceId;
    if (!next(from).includes(to)) assert.fail(`${from} -> ${to} is not an edge in ${cycle.join(' -> ')}`);
  }
  // Simple: no vertex repeated except the closing one.
  assert.equal(new Set(cycle.slice(0, -1)).size, cycle.length - 1, `not simple: ${cycle.join(' -> ')}`);
}

describe('findCycles', () => {
  test('an acyclic graph has none (chains, diamonds, isolated vertices)', () => {
    const g = graph(['a>b', 'b>c', 'a>c', 'c>d', 'a>d', 'x>y']);
    g.ids.push(id('noop', 'alone'));
    assert.deepEqual(findCycles(g.ids, g.next), []);
    assert.deepEqual(findCycles([], g.next), []);
  });

  test('a self-loop is a cycle of one', () => {
    const g = graph(['a>a', 'a>b']);
    assert.deepEqual(findCycles(g.ids, g.next), [[id('noop', 'a'), id('noop', 'a')]]);
  });

  test('a two- and a three-cycle are given as the path that closes them, in edge direction', () => {
    const two = graph(['a>b', 'b>a']);
    assert.deepEqual(findCycles(two.ids, two.next), [[id('noop', 'a'), id('noop', 'b'), id('noop', 'a')]]);
    const three = graph(['a>b', 'b>c', 'c>a']);
    const [cycle] = findCycles(three.ids, three.next);
    assert.ok(cycle !== undefined);
    assert.deepEqual(cycle, ['noop[a]', 'noop[b]', 'noop[c]', 'noop[a]']);
  });

  test('a cycle hanging off an acyclic part is found and the acyclic part is left out', () => {
    const g = graph(['root>x', 'x>p', 'p>q', 'q>r', 'r>p', 'r>leaf']);
    const cycles = findCycles(g.ids, g.next);
    assert.equal(cycles.length, 1);
    const cycle = cycles[0] ?? [];
    assertIsCycle(cycle, g.next);
    assert.deepEqual(new Set(cycle), new Set([id('noop', 'p'), id('noop', 'q'), id('noop', 'r')]));
  });

  test('separate cycles are each reported', () => {
    const g = graph(['a>b', 'b>a', 'c>d', 'd>e', 'e>c', 'f>f', 'b>c']);
    const cycles = findCycles(g.ids, g.next);
    assert.equal(cycles.length, 3);
    for (const c of cycles) assertIsCycle(c, g.next);
    const members = cycles.map((c) => [...new Set(c)].sort().join(' ')).sort();
    assert.deepEqual(members, ['noop[a] noop[b]', 'noop[c] noop[d] noop[e]', 'noop[f]']);
  });

  test('one strongly connected component with several loops gives one real cycle', () => {
    const g = graph(['a>b', 'b>c', 'c>a', 'b>d', 'd>a', 'c>d']);
    const cycles = findCycles(g.ids, g.next);
    assert.equal(cycles.length, 1);
    assertIsCycle(cycles[0] ?? [], g.next);
  });

  test('a 10,000-vertex chain and ring do not overflow the stack', () => {
    const n = 10_000;
    const ids = Array.from({ length: n }, (_, i) => id('noop', String(i)));
    const chain = (v: ResourceId): readonly ResourceId[] => {
      const i = Number(v.slice(5, -1));
      return i + 1 < n ? [ids[i + 1] as ResourceId] : [];
    };
    assert.deepEqual(findCycles(ids, chain), []);
    const ring = (v: ResourceId): readonly ResourceId[] => [ids[(Number(v.slice(5, -1)) + 1) % n] as ResourceId];
    const cycles = findCycles(ids, ring);
    assert.equal(cycles.length, 1);
    const cycle = cycles[0] ?? [];
    assert.equal(cycle.length, n + 1);
    assertIsCycle(cycle, ring);
  });
});

describe('cycles in graph files', () => {
  test('the cycle is printed as kind[name] -> ... at the first resource in it, with a hint', () => {
    const e = onlyError(`resources:
  - kind: noop
    name: a
    before: [noop:b]
  - kind: noop
    name: b
    before: ["noop[a]"]
`);
    assert.equal(e.code, 'E_CYCLE');
    assert.equal(e.message, 'dependency cycle: noop[a] -> noop[b] -> noop[a]');
    assert.equal(where(e), `${GRAPH_FILE}:2:5`);
    assert.match(e.hint ?? '', /remove one of these edges/);
    assert.equal(e.format(), `${GRAPH_FILE}:2:5: dependency cycle: noop[a] -> noop[b] -> noop[a]\n  hint: ${e.hint ?? ''}`);
  });

  test('a resource that requires itself', () => {
    const e = onlyError(`resources:
  - kind: noop
    name: first
  - kind: noop
    name: me
    require: noop:me
`);
    assert.equal(e.message, 'dependency cycle: noop[me] -> noop[me]');
    assert.equal(e.where?.line, 4);
  });

  test('a cycle through require, subscribe and notify across kinds', () => {
    const e = onlyError(`resources:
  - kind: print
    name: p
    msg: hi
    require: [noop:a]
  - kind: noop
    name: a
    subscribe: [exec:e]
  - kind: exec
    name: e
    cmd: [ls]
    subscribe: [print:p]
`);
    assert.equal(e.code, 'E_CYCLE');
    assert.equal(e.message, 'dependency cycle: print[p] -> exec[e] -> noop[a] -> print[p]');
    assert.equal(e.where?.line, 2);
  });

  test('every cycle of a file is reported, each at its own line', () => {
    const errors = buildErrors(`resources:
  - { kind: noop, name: a, require: [noop:b] }
  - { kind: noop, name: b, require: [noop:a] }
  - { kind: noop, name: ok }
  - { kind: noop, name: c, before: [noop:d] }
  - { kind: noop, name: d, before: [noop:e] }
  - { kind: noop, name: e, before: [noop:c] }
`);
    assert.deepEqual(
      errors.map((e) => `${e.where?.line}: ${e.message}`),
      ['2: dependency cycle: noop[a] -> noop[b] -> noop[a]', '5: dependency cycle: noop[c] -> noop[d] -> noop[e] -> noop[c]'],
    );
  });
});
