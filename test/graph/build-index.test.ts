import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { z } from 'zod';
import { parseGraphText } from '../../src/frontends/load.js';
import { buildGraph } from '../../src/graph/build.js';
import { PlaceIndex, VertexList, type Graph, type Vertex } from '../../src/graph/graph.js';
import { idHash, resourceId, textHash } from '../../src/graph/ids.js';
import { defaultMeta } from '../../src/graph/meta.js';
import { fileKind } from '../../src/resources/file.js';
import { pkgKind } from '../../src/resources/pkg.js';
import { createRegistry } from '../../src/resources/registry.js';
import { defineKind } from '../../src/resources/types.js';
import { GRAPH_FILE, allKinds, build, buildErrors, edgeTexts, id } from '../helpers/graph.js';

/**
 * Two texts `${prefix}${i}` of one hash, found by search: the hash is seeded per process (a fixed one would let
 * anyone write names that all share a slot), so the pair differs from run to run. A 32-bit hash gives a pair within
 * ~80,000 texts half the time; the search goes on until it finds one.
 */
function sameHash(prefix: string, hash: (text: string) => number): readonly [string, string] {
  const seen = new Map<number, string>();
  for (let i = 0; ; i++) {
    const text = `${prefix}${i}`;
    const h = hash(text);
    const other = seen.get(h);
    if (other !== undefined) return [other, text];
    seen.set(h, text);
  }
}
const SAME_HASH_THINGS = sameHash('path /srv/f', textHash);
/** Two noop names whose ids have one idHash. */
const SAME_HASH_NAMES = sameHash('n', (name) => idHash('noop', name));

function plainVertex(kind: string, name: string): Vertex {
  return { id: resourceId(kind, name), kind, name, params: {}, meta: defaultMeta, loc: undefined, fingerprint: '' };
}

describe('ids: hashes', () => {
  test('the hash is seeded per process: the same id hashes differently in another process', async () => {
    const { execFileSync } = await import('node:child_process');
    const script = `import { idHash } from ${JSON.stringify(new URL('../../src/graph/ids.ts', import.meta.url).href)}; console.log(idHash('file', '/etc/motd'));`;
    const run = (): string => execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8' }).trim();
    // Two other processes and this one: equal by chance once in 2^32 per pair.
    const hashes = new Set([run(), run(), String(idHash('file', '/etc/motd'))]);
    assert.equal(hashes.size, 3);
  });

  test('idHash of kind and name is textHash of the id itself, for any text', () => {
    for (const [kind, name] of [
      ['file', '/etc/motd'],
      ['noop', 'a'],
      ['noop', ''],
      ['pkg', 'nginx'],
      ['pkg', 'vim'],
      ['kv', 'ab'],
      ['group', 'x'],
      ['group', ''],
      ['template', '/etc/a.conf'],
      ['exec', 'with [brackets] and: colons'],
      ['file', '/srv/été/日本/🙂'],
      ['user', 'x'.repeat(300)],
    ] as const)
      assert.equal(idHash(kind, name), textHash(resourceId(kind, name)), `${kind}[${name}]`);
  });

  test('names differing in one character spread over the low bits', () => {
    // The index uses the low bits: without the final mix, FNV's low bits depend on the low bits of each character only.
    // These characters differ in their high bits only ("!", "A", "a", "¡", "Á", "á", ...: 0x21 + 32k).
    const chars = [0x21, 0x41, 0x61, 0x81, 0xa1, 0xc1, 0xe1, 0x101].map((c) => String.fromCharCode(c));
    const low = new Set<number>();
    for (const a of chars) for (const b of chars) low.add(idHash('file', `/srv/${a}${b}`) & 31);
    assert.ok(low.size > 16, `${low.size} of 32 buckets`);
  });
});

describe('PlaceIndex and VertexList', () => {
  test('places that share a hash are told apart by kind and name, by parts or by id text', () => {
    const list = [plainVertex('noop', 'a'), plainVertex('noop', 'b'), plainVertex('exec', 'a'), plainVertex('noop', 'ab')];
    const index = new PlaceIndex(list.length);
    // One hash for all: every lookup walks past the others, comparing in place.
    for (let p = 0; p < list.length; p++) index.add(p, 7);
    assert.equal(index.find(list, 'noop', 'a', 7), 0);
    assert.equal(index.find(list, 'noop', 'b', 7), 1);
    assert.equal(index.find(list, 'exec', 'a', 7), 2);
    assert.equal(index.find(list, 'noop', 'ab', 7), 3);
    assert.equal(index.find(list, 'noop', 'c', 7), -1);
    assert.equal(index.find(list, 'noop', 'a', 8), -1);
    // By id text: every place under the hash of the last id, so the others are passed over by comparing ids.
    const last = list[3]?.id ?? '';
    const byText = new PlaceIndex(list.length);
    for (let p = 0; p < list.length; p++) byText.add(p, textHash(last));
    assert.equal(byText.findId(list, last), 3);
    assert.equal(byText.findId(list, 'noop[zz]'), -1);
  });

  test('VertexList looks ids up as text: near misses are not found', () => {
    const list = [plainVertex('noop', 'a'), plainVertex('file', '/x]'), plainVertex('noop', 'a[b]')];
    const index = new PlaceIndex(list.length);
    list.forEach((v, p) => index.add(p, idHash(v.kind, v.name)));
    const vertices = new VertexList(list, index);
    for (const [p, v] of list.entries()) {
      assert.equal(vertices.get(v.id), v);
      assert.equal(vertices.indexOf(v.id), p);
      assert.ok(vertices.has(v.id));
    }
    for (const miss of ['noop[a', 'noopa]', 'noop[a]]', 'noo[a]', 'noop[b]', 'file[/x]', 'file[/x]]]', 'noop[a[b]', '', '[]'])
      assert.equal(vertices.has(miss as never), false, miss);
    assert.deepEqual([...vertices.keys()], list.map((v) => v.id));
  });

  test('two resources whose ids share a hash are both in the graph, each found by its own id', () => {
    const [a, b] = SAME_HASH_NAMES;
    assert.equal(idHash('noop', a), idHash('noop', b));
    const g = build(`resources:
  - { kind: noop, name: ${a} }
  - { kind: noop, name: ${b} }
  - { kind: noop, name: c, require: ["noop[${b}]"] }
`);
    assert.deepEqual([...g.vertices.keys()], [id('noop', a), id('noop', b), id('noop', 'c')]);
    assert.equal(g.vertices.get(id('noop', b))?.name, b);
    assert.equal(g.vertices.get(id('noop', a))?.name, a);
    assert.deepEqual(edgeTexts(g), [`noop[${b}] -> noop[c]`]);
  });

  test('a duplicate of a name that shares a hash with another is still found', () => {
    const [a, b] = SAME_HASH_NAMES;
    const errors = buildErrors(`resources:
  - { kind: noop, name: ${a} }
  - { kind: noop, name: ${b} }
  - { kind: noop, name: ${b} }
`);
    assert.deepEqual(
      errors.map((e) => [e.code, e.message, e.where?.line]),
      [['E_DUPLICATE', `noop[${b}] is declared twice`, 4]],
    );
  });

  test('a vertex names itself kind[name] when asked, the same text each time', () => {
    const g = build(`resources:
  - { kind: noop, name: a }
  - { kind: file, name: /srv/x, content: "" }
`);
    const v = [...g.vertices.values()];
    assert.deepEqual(
      v.map((x) => x.id),
      [id('noop', 'a'), id('file', '/srv/x')],
    );
    assert.equal(v[1]?.id, v[1]?.id);
  });
});

describe('two resources managing one thing: found by hash, compared as text', () => {
  test('things that share a hash but differ are no overlap', () => {
    const [t1, t2] = SAME_HASH_THINGS;
    assert.equal(textHash(t1), textHash(t2));
    const p1 = t1.slice('path '.length);
    const p2 = t2.slice('path '.length);
    const g = build(`resources:
  - { kind: file, name: one, path: ${p1}, content: "" }
  - { kind: file, name: two, path: ${p2}, content: "" }
`);
    assert.equal(g.vertices.size, 2);
  });

  test('the same thing after another of its hash is an overlap with the first claimant', () => {
    const [t1, t2] = SAME_HASH_THINGS;
    const p1 = t1.slice('path '.length);
    const p2 = t2.slice('path '.length);
    const errors = buildErrors(`resources:
  - { kind: file, name: one, path: ${p1}, content: "" }
  - { kind: file, name: two, path: ${p2}, content: "" }
  - { kind: file, name: three, path: ${p2}/, content: "" }
`);
    assert.deepEqual(
      errors.map((e) => [e.code, e.message, e.where?.line]),
      [['E_OVERLAP', `file[three] manages ${t2}, which file[two] (${GRAPH_FILE}:3:5) already manages`, 4]],
    );
  });
});

/** A kind that provides and wants what its parameters say, for auto-edge tests. */
const hintKind = defineKind({
  kind: 'hint',
  description: 'test: provides and wants the keys given',
  schema: z.strictObject({ provides: z.array(z.string()).default([]), wants: z.array(z.string()).default([]) }),
  autoEdges: (p) => ({ provides: p.provides, wants: p.wants }),
  create: () => ({ checkApply: () => Promise.resolve({ converged: true, changes: [] }) }),
});
const hintRegistry = createRegistry([...allKinds, hintKind]);

function buildHints(text: string) {
  return buildGraph(parseGraphText(GRAPH_FILE, text), hintRegistry);
}

describe('auto-edges: provided keys are matched by length, then as text', () => {
  test('each of several keys a resource provides is matched to its own wanters; a key of a wanted length that nobody wants is not', () => {
    const g = buildHints(`resources:
  - { kind: hint, name: p, provides: ["k:aa", "k:b", "k:cc", "k:dd"] }
  - { kind: hint, name: q, provides: ["k:ee"] }
  - { kind: hint, name: w1, wants: ["k:cc"] }
  - { kind: hint, name: w2, wants: ["k:b", "k:zz"] }
  - { kind: hint, name: w3, wants: ["k:ee", "k:dd"] }
`);
    assert.deepEqual(edgeTexts(g), ['hint[p] -> hint[w1] auto', 'hint[p] -> hint[w2] auto', 'hint[p] -> hint[w3] auto', 'hint[q] -> hint[w3] auto']);
    // w3 wants ee then dd: its providers in the order of its keys.
    assert.deepEqual(
      g.dependencies(id('hint', 'w3')).map((e) => e.from),
      [id('hint', 'q'), id('hint', 'p')],
    );
  });

  test('a kind whose answer reads the host is asked once: the edges follow that answer, even if a second ask would differ', () => {
    // As pkg's answer (dpkg's file list) may change when a package is installed during the build.
    let asks = 0;
    const shifting = defineKind({
      kind: 'shifting',
      description: 'test: provides another key each time it is asked',
      schema: z.strictObject({}),
      autoEdgesReadHost: true,
      autoEdges: () => ({ provides: [asks++ === 0 ? 'k:first' : 'k:other'] }),
      create: () => ({ checkApply: () => Promise.resolve({ converged: true, changes: [] }) }),
    });
    const g = buildGraph(
      parseGraphText(
        GRAPH_FILE,
        `resources:
  - { kind: shifting, name: s }
  - { kind: hint, name: w1, wants: ["k:first"] }
  - { kind: hint, name: w2, wants: ["k:other"] }
`,
      ),
      createRegistry([...allKinds, hintKind, shifting]),
    );
    assert.equal(asks, 1);
    assert.deepEqual(edgeTexts(g), ['shifting[s] -> hint[w1] auto']);
    // pkg's answer reads dpkg's file lists, so it says so.
    assert.equal(pkgKind.autoEdgesReadHost, true);
  });

  test('keys of 255 characters or more are matched too', () => {
    const long = `k:${'x'.repeat(300)}`;
    const other = `k:${'y'.repeat(400)}`;
    const g = buildHints(`resources:
  - { kind: hint, name: w, wants: ["${long}"] }
  - { kind: hint, name: p1, provides: ["${other}"] }
  - { kind: hint, name: p2, provides: ["${long}"] }
`);
    assert.deepEqual(edgeTexts(g), ['hint[p2] -> hint[w] auto']);
  });

  test('files in directories named alike each want their own directories', () => {
    const want = (path: string) => fileKind.autoEdges?.(fileKind.schema.parse({ path }))?.wants;
    // Asked in a row, as the builder does: each answer is the path's own, whether or not the last directory matched.
    const seq = ['/srv/ab/f', '/srv/ab/g', '/srv/ac/h', '/srv/a/i', '/srv/abc', '/x', '/y', '/srv/ab/j', '/srv/ab/k/l'];
    assert.deepEqual(
      seq.map(want),
      [
        ['path:/srv/ab', 'path:/srv'],
        ['path:/srv/ab', 'path:/srv'],
        ['path:/srv/ac', 'path:/srv'],
        ['path:/srv/a', 'path:/srv'],
        ['path:/srv'],
        [],
        [],
        ['path:/srv/ab', 'path:/srv'],
        ['path:/srv/ab/k', 'path:/srv/ab', 'path:/srv'],
      ],
    );
  });

  test('a file with a source, owner or group also wants those; one without wants only its directories', () => {
    const edges = (p: Record<string, unknown>) => fileKind.autoEdges?.(fileKind.schema.parse({ path: '/srv/a/f', ...p }));
    assert.deepEqual(edges({}), { provides: ['path:/srv/a/f'], wants: ['path:/srv/a', 'path:/srv'] });
    assert.deepEqual(edges({ source: '/src/f', owner: 'web', group: '0' })?.wants, ['path:/srv/a', 'path:/srv', 'path:/src/f', 'user:web']);
    assert.deepEqual(edges({ group: 'staff' })?.wants, ['path:/srv/a', 'path:/srv', 'group:staff']);
  });
});

describe('schema checks: zod compiles no fast path for a kind with few resources', () => {
  /** Fast-path bodies zod compiles (new Function with code; its one probe of `new Function("")` is not one) while `fn` runs. */
  function compiledDuring(fn: () => void): number {
    const real = globalThis.Function;
    let compiled = 0;
    globalThis.Function = new Proxy(real, {
      construct(target, args: string[]) {
        if ((args.at(-1) ?? '') !== '') compiled++;
        return Reflect.construct(target, args);
      },
    });
    try {
      fn();
    } finally {
      globalThis.Function = real;
    }
    return compiled;
  }

  test('the first 32 resources of a kind are checked without it, the next with it; the parameters come out the same', () => {
    // A schema of its own: no other test has parsed with it, so its fast path is not compiled yet.
    const kind = defineKind({
      kind: 'jit',
      description: 'test: parameters with a nested object',
      schema: z.strictObject({ n: z.number(), inner: z.strictObject({ s: z.string().default('x') }).default({ s: 'x' }) }),
      create: () => ({ checkApply: () => Promise.resolve({ converged: true, changes: [] }) }),
    });
    const reg = createRegistry([...allKinds, kind]);
    const graphOf = (count: number): string => `resources:\n${Array.from({ length: count }, (_, i) => `  - { kind: jit, name: r${i}, n: ${i} }`).join('\n')}\n`;
    let few: Graph | undefined;
    assert.equal(compiledDuring(() => (few = buildGraph(parseGraphText(GRAPH_FILE, graphOf(32)), reg))), 0);
    let many: Graph | undefined;
    assert.ok(compiledDuring(() => (many = buildGraph(parseGraphText(GRAPH_FILE, graphOf(33)), reg))) > 0, 'the 33rd resource was not checked with the fast path');
    assert.deepEqual(few?.vertices.get(id('jit', 'r31'))?.params, { n: 31, inner: { s: 'x' } });
    assert.deepEqual(many?.vertices.get(id('jit', 'r32'))?.params, { n: 32, inner: { s: 'x' } });
  });
});
