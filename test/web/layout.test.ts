import assert from 'node:assert/strict';
import { test } from 'node:test';
import { layered } from '../../web/layout.js';

/** The dashboard's graph drawing: longest-path layers, a stable order within them, and no hang on hostile data. */

test('each resource sits one layer right of its furthest prerequisite', () => {
  // a -> b -> c, a -> c: c is on layer 2 (longest path), not 1 (shortest).
  const { pos, layers } = layered({ nodes: ['c', 'b', 'a', 'd'], edges: [{ from: 'a', to: 'b' }, { from: 'b', to: 'c' }, { from: 'a', to: 'c' }] });
  assert.equal(pos.get('a')?.layer, 0);
  assert.equal(pos.get('b')?.layer, 1);
  assert.equal(pos.get('c')?.layer, 2);
  assert.equal(pos.get('d')?.layer, 0, 'a resource with no edges is on the first layer');
  assert.deepEqual(layers.map((l) => l.length), [2, 1, 1]);
});

test('the order within a layer follows the neighbours in the layer before (fewer crossings)', () => {
  // x1 -> y2 and x2 -> y1: sorted by name the edges would cross; by barycentre they do not.
  const { pos } = layered({ nodes: ['x1', 'x2', 'y1', 'y2'], edges: [{ from: 'x1', to: 'y2' }, { from: 'x2', to: 'y1' }] });
  const crossing = Math.sign((pos.get('x1')?.order ?? 0) - (pos.get('x2')?.order ?? 0)) !== Math.sign((pos.get('y2')?.order ?? 0) - (pos.get('y1')?.order ?? 0));
  assert.equal(crossing, false, JSON.stringify([...pos]));
});

test('a cycle, a self-edge, an edge to nowhere and duplicate ids end in a layout, not a hang', () => {
  const { pos } = layered({
    nodes: ['a', 'b', 'c', 'a'],
    edges: [{ from: 'a', to: 'b' }, { from: 'b', to: 'c' }, { from: 'c', to: 'a' }, { from: 'b', to: 'b' }, { from: 'ghost', to: 'a' }],
  });
  assert.equal(pos.size, 3);
  for (const p of pos.values()) assert.ok(Number.isInteger(p.layer) && p.layer >= 0 && p.layer < 3);
});

test('10,000 resources in a long chain lay out fast and without a stack overflow', () => {
  const n = 10_000;
  const nodes = Array.from({ length: n }, (_, i) => `r${i}`);
  const edges = nodes.slice(1).map((id, i) => ({ from: nodes[i] ?? '', to: id }));
  const t0 = performance.now();
  const { pos } = layered({ nodes: [...nodes].reverse(), edges });
  assert.equal(pos.get(`r${n - 1}`)?.layer, n - 1);
  assert.ok(performance.now() - t0 < 2000, `took ${performance.now() - t0} ms`);
});
