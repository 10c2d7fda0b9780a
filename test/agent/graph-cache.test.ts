import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { chmod, chown, cp, link, mkdir, mkdtemp, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { z } from 'zod';
import { CACHE_MIN_BYTES, KEEP_ENTRIES, KEEP_UNUSED_MS, STALE_TEMP_MS, cachePath, exactJson, pruneGraphCache, readCachedGraph, writeCachedGraph, type GraphCacheKey } from '../../src/agent/graph-cache.js';
import { GraphSource } from '../../src/agent/graph-source.js';
import { ValidationErrors } from '../../src/errors.js';
import { parseGraphText } from '../../src/frontends/load.js';
import { buildGraph } from '../../src/graph/build.js';
import { resourceId } from '../../src/graph/ids.js';
import type { Graph } from '../../src/graph/graph.js';
import { createLogger } from '../../src/log.js';
import { builtinKinds } from '../../src/resources/builtin-kinds.js';
import { builtinKindNames, createRegistry } from '../../src/resources/registry.js';
import type { AnyResourceKind } from '../../src/resources/types.js';
import { ROOT, runCli } from '../helpers/cli.js';
import { until } from '../helpers/engine.js';

/**
 * The validated-graph cache (src/agent/graph-cache.ts): a run of an unchanged YAML graph by the same build skips the
 * parse and the validation, and nothing short of an intact, private entry made for exactly this text, path and build
 * is ever used.
 */

const BUILD = 'b'.repeat(64);
/** A comment that makes a graph long enough to be cached (CACHE_MIN_BYTES): smaller ones are parsed instead. */
const PAD = `# ${'padding '.repeat(CACHE_MIN_BYTES / 8)}\n`;
const registry = createRegistry();
// build() below builds synchronously: every kind loaded first, as GraphSource does for the kinds a graph names.
await registry.prepare(builtinKindNames);

function build(file: string, text: string): { raw: ReturnType<typeof parseGraphText>; graph: Graph } {
  const raw = parseGraphText(file, text);
  return { raw, graph: buildGraph(raw, registry) };
}

/** Everything code could read of a graph, as plain data. */
function project(g: Graph): unknown {
  return {
    source: g.source,
    vertices: [...g.vertices].map(([key, v]) => ({ key, id: v.id, kind: v.kind, name: v.name, params: v.params, meta: v.meta, loc: v.loc, fingerprint: v.fingerprint })),
    edges: g.edges.map((e) => ({ ...e })),
    exports: g.exports,
    collect: g.collect,
    warnings: g.warnings,
    order: g.topoOrder(),
  };
}

async function hit(key: GraphCacheKey): Promise<Graph> {
  const got = await readCachedGraph(key);
  if ('miss' in got) assert.fail(`expected a hit, got a miss: ${got.miss}`);
  return got.graph;
}

async function miss(key: GraphCacheKey): Promise<string> {
  const got = await readCachedGraph(key);
  if ('graph' in got) assert.fail('expected a miss, got a hit');
  return got.miss;
}

function richGraph(dir: string): string {
  return `resources:
  - kind: file
    name: ${dir}/d
    type: directory
  - kind: file
    name: ${dir}/d/a
    content: "a\\n"
    mode: 0644
    meta: { retry: 2, delay: 1s, sema: ["x:1"] }
    notify: ["exec[reload]"]
  - kind: exec
    name: reload
    cmd: ["true"]
    refreshOnly: true
  - kind: template
    name: ${dir}/d/t
    template: "{{ vars.x }}"
    vars: { x: [1, 2.5, null, "s", "\\u00e9\\u2028\\U0001F600"], nested: { y: true, "__proto__": 1 } }
    require: [file:${dir}/d/a]
  - { kind: noop, name: "n-\\u00e9", meta: { limit: 0.5, burst: 2 } }
${PAD}`;
}

/** [1, <hole>, 2] */
function holey(): unknown[] {
  const a: unknown[] = [1];
  a[2] = 2;
  return a;
}

describe('validated-graph cache', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bp-gcache-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('a hit gives the very Graph a full parse gives: vertices with params, meta and file:line, edges, order', async () => {
    const stateDir = join(dir, 'same');
    const file = join(dir, 'rich.yaml');
    const text = richGraph(dir);
    const full = build(file, text);
    const key = { stateDir, file, text, build: BUILD };
    assert.equal(await writeCachedGraph(key, full.raw, full.graph), undefined);
    const cached = await hit(key);
    // Parameters are parsed when first read (LazyParams): any order gives each vertex its own, the same object each time.
    const fresh = await hit(key);
    for (const v of [...fresh.vertices.values()].reverse()) {
      assert.deepEqual(v.params, full.graph.vertices.get(v.id)?.params, v.id);
      assert.equal(v.params, v.params, `${v.id}: one object`);
    }
    assert.deepEqual(project(cached), project(full.graph));
    // The kinds to load before the engine starts come with the hit (not from walking every lazy vertex).
    const got = await readCachedGraph(key);
    assert.ok('kinds' in got);
    assert.deepEqual([...got.kinds].sort(), [...new Set([...full.graph.vertices.values()].map((v) => v.kind))].sort());
    assert.equal(full.graph.edges.filter((e) => e.auto).length > 0 && full.graph.edges.some((e) => e.notify), true, 'the sample has auto and notify edges');
    assert.deepEqual([...cached.vertices.values()].map((v) => v.loc?.line), [2, 5, 11, 15, 20]);
    // Resources that declare no meta share one frozen object, as after a parse.
    const plain = [...cached.vertices.values()].filter((v) => v.kind === 'exec' || v.id.endsWith('/d]'));
    assert.equal(plain.length, 2);
    assert.equal(plain[0]?.meta, plain[1]?.meta);
    assert.equal(plain[0]?.meta, full.graph.vertices.get(plain[0]?.id ?? ('' as never))?.meta);
    assert.ok(Object.isFrozen(plain[0]?.meta));

    // Every example graph that can be cached round-trips too, mgmt's format included (other paths into the file).
    let n = 0;
    for (const f of [...readdirSync(join(ROOT, 'examples')).map((x) => join(ROOT, 'examples', x)), ...readdirSync(join(ROOT, 'examples', 'mgmt')).map((x) => join(ROOT, 'examples', 'mgmt', x))]) {
      if (!f.endsWith('.yaml')) continue;
      const t = readFileSync(f, 'utf8');
      let g;
      try {
        g = build(f, t);
      } catch {
        continue;
      }
      const k = { stateDir, file: f, text: t, build: BUILD };
      if ((await writeCachedGraph(k, g.raw, g.graph)) !== undefined) continue;
      assert.deepEqual(project(await hit(k)), project(g.graph), f);
      n++;
    }
    assert.ok(n >= 4, `only ${n} examples were cached`);
  });

  test('a hit reads like a built graph: each vertex and edge list one object, every lookup as the Map and lists a build makes', async () => {
    const stateDir = join(dir, 'lookups');
    const file = join(dir, 'lookups.yaml');
    // Declared out of order (a dependency after its dependent), with a fan-out and a fan-in, and a place that is not
    // ['resources', i] (mgmt's format has those; here a vertex's place is found through the entry's paths).
    const text = `resources:
  - { kind: file, name: ${dir}/l/a, content: "a", require: ["file[${dir}/l/z]"] }
  - { kind: file, name: ${dir}/l, type: directory }
  - { kind: file, name: ${dir}/l/b, content: "b", notify: ["exec[r]"] }
  - { kind: file, name: ${dir}/l/z, content: "z", before: ["exec[r]"] }
  - { kind: exec, name: r, cmd: ["true"], refreshOnly: true }
${PAD}`;
    const full = build(file, text);
    const key = { stateDir, file, text, build: BUILD };
    assert.equal(await writeCachedGraph(key, full.raw, full.graph), undefined);
    const g = await hit(key);
    assert.equal(g.vertices.size, full.graph.vertices.size);
    // Dependents' ids read one at a time, before any list of edges is made: the lists' order, the same ids.
    const fresh = await hit(key);
    for (const id of full.graph.vertices.keys()) {
      const l = fresh.dependentIds(id);
      assert.deepEqual(Array.from({ length: l.length }, (_, k) => l.at(k)), full.graph.dependents(id).map((e) => e.to), `${id}: dependentIds`);
    }
    // Asked in another order than the entry's: each id finds its own vertex, the same object every time.
    for (const id of [...full.graph.vertices.keys()].reverse()) {
      assert.equal(g.vertices.has(id), true);
      const v = g.vertices.get(id);
      assert.equal(v?.id, id);
      assert.equal(g.vertices.get(id), v, `${id}: one object`);
      assert.deepEqual(g.dependencies(id), full.graph.dependencies(id), `${id}: dependencies`);
      assert.deepEqual(g.dependents(id), full.graph.dependents(id), `${id}: dependents`);
      assert.equal(g.dependents(id), g.dependents(id), `${id}: one list`);
    }
    const unknown = resourceId('file', `${dir}/nope`);
    assert.equal(g.vertices.has(unknown), false);
    assert.equal(g.vertices.get(unknown), undefined);
    assert.deepEqual([g.dependents(unknown), g.dependencies(unknown)], [[], []]);
    // An edge is one object wherever it is found: in the list, and as a dependent and a dependency.
    for (const e of g.edges) {
      assert.ok(g.dependents(e.from).includes(e));
      assert.ok(g.dependencies(e.to).includes(e));
    }
    assert.deepEqual([...g.vertices.keys()], [...full.graph.vertices.keys()]);
    assert.deepEqual([...g.vertices.values()].map((v) => v.id), [...full.graph.vertices.keys()]);
    const seen: string[] = [];
    g.vertices.forEach((v, id, map) => {
      assert.equal(v, g.vertices.get(id));
      assert.equal(map, g.vertices);
      seen.push(id);
    });
    assert.deepEqual(seen, [...full.graph.vertices.keys()]);
    assert.deepEqual(new Map(g.vertices).size, g.vertices.size);
    assert.deepEqual(g.downstream([resourceId('file', `${dir}/l/z`)]), full.graph.downstream([resourceId('file', `${dir}/l/z`)]));

    // A vertex whose id cannot be kept in the entry's list of ids (one a line, UTF-8) is not cached.
    for (const name of [`${dir}/new\nline`, `${dir}/lone-\ud800`]) {
      const t = `resources:\n  - kind: noop\n    name: ${JSON.stringify(name)}\n${PAD}`;
      const raw = parseGraphText(file, t);
      assert.match((await writeCachedGraph({ ...key, text: t }, raw, buildGraph(raw, registry))) ?? '', /its name cannot be stored/, JSON.stringify(name));
    }
  });

  test('another text, another path or another build misses', async () => {
    const stateDir = join(dir, 'keys');
    const file = join(dir, 'k.yaml');
    const text = `resources:\n  - { kind: file, name: ${dir}/k, content: "one" }\n`;
    const g = build(file, text);
    assert.equal(await writeCachedGraph({ stateDir, file, text, build: BUILD }, g.raw, g.graph), undefined);
    await hit({ stateDir, file, text, build: BUILD });
    assert.match(await miss({ stateDir, file, text: text.replace('one', 'two'), build: BUILD }), /another text, path or build/);
    assert.match(await miss({ stateDir, file, text: `${text} `, build: BUILD }), /another text, path or build/);
    assert.match(await miss({ stateDir, file, text, build: 'c'.repeat(64) }), /another text, path or build/);
    // Another path has its own entry, and the key names the path too: an entry copied there is not taken for it.
    const other = join(dir, 'k2.yaml');
    assert.match(await miss({ stateDir, file: other, text, build: BUILD }), /none yet/);
    await cp(cachePath(stateDir, file), cachePath(stateDir, other));
    assert.match(await miss({ stateDir, file: other, text, build: BUILD }), /another text, path or build/);
  });

  test('the cache is bounded: the entry written, the most recently used others, no stale temp files', async () => {
    const stateDir = join(dir, 'prune');
    const cacheDir = join(stateDir, 'graph-cache');
    const now = Date.now();
    const day = 24 * 3600 * 1000;
    const keyOf = (i: number): GraphCacheKey => {
      const file = join(dir, `p${i}.yaml`);
      return { stateDir, file, text: `resources:\n  - { kind: file, name: ${dir}/p${i}, content: "x" }\n`, build: BUILD };
    };
    const put = async (i: number): Promise<void> => {
      const k = keyOf(i);
      const g = build(k.file, k.text);
      assert.equal(await writeCachedGraph(k, g.raw, g.graph), undefined);
    };
    // 12 graphs' entries (each written alone, since a write prunes), dated i hours ago (p0 newest); p1 unused longer.
    for (let i = 0; i < 12; i++) {
      const seed = { ...keyOf(i), stateDir: join(dir, `prune-seed${i}`) };
      const g = build(seed.file, seed.text);
      assert.equal(await writeCachedGraph(seed, g.raw, g.graph), undefined);
      mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
      cpSync(cachePath(seed.stateDir, seed.file), cachePath(stateDir, seed.file));
    }
    const age = (i: number, ms: number): void => utimesSync(cachePath(stateDir, keyOf(i).file), new Date(now - ms), new Date(now - ms));
    for (let i = 0; i < 12; i++) age(i, i * 3600 * 1000);
    age(1, KEEP_UNUSED_MS + day);
    // A temp file of a dead writer (hours old), one of a write in progress (fresh), a pruner's leftover, a stranger.
    const entry0 = cachePath(stateDir, keyOf(0).file);
    const stale = `${entry0}.0123456789ab.tmp`;
    const fresh = `${entry0}.ba9876543210.tmp`;
    const grave = `${entry0}.00000000000f.prune`;
    for (const f of [stale, fresh, grave, join(cacheDir, 'notes.txt')]) writeFileSync(f, 'x');
    utimesSync(stale, new Date(now - STALE_TEMP_MS - 1000), new Date(now - STALE_TEMP_MS - 1000));
    utimesSync(grave, new Date(now - STALE_TEMP_MS - 1000), new Date(now - STALE_TEMP_MS - 1000));
    // A hit counts as use: p9 (9 hours old, beyond the newest KEEP_ENTRIES) is run again, and is kept.
    age(9, 9 * 3600 * 1000);
    await hit(keyOf(9));
    await until(() => Date.now() - statSync(cachePath(stateDir, keyOf(9).file)).mtimeMs < 60_000, 2000, 'the hit refreshed its entry');
    // Writing p12 prunes: it, and the KEEP_ENTRIES - 1 most recently used others (p9, p0, p2..p6; not p1, unused too long).
    await put(12);
    const left = readdirSync(cacheDir).sort();
    const names = (ids: number[]): string[] => ids.map((i) => cachePath(stateDir, keyOf(i).file).slice(cacheDir.length + 1));
    assert.deepEqual(left, [...names([0, 2, 3, 4, 5, 6, 9, 12]), fresh.slice(cacheDir.length + 1), 'notes.txt'].sort());
    assert.equal(KEEP_ENTRIES, 8);
    await hit(keyOf(12));
    await hit(keyOf(0));
    assert.match(await miss(keyOf(8)), /none yet/);
  });

  test('pruning never removes an entry written after it was judged: it is linked back, a newer one at its name stays', () => {
    const stateDir = join(dir, 'prune-race');
    const cacheDir = join(stateDir, 'graph-cache');
    mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
    const old = join(cacheDir, `${'a'.repeat(32)}.json`);
    const keep = join(cacheDir, `${'b'.repeat(32)}.json`);
    writeFileSync(old, 'old');
    writeFileSync(keep, 'keep');
    const longAgo = new Date(Date.now() - KEEP_UNUSED_MS - 24 * 3600 * 1000);
    utimesSync(old, longAgo, longAgo);
    // Another process renames a new version of that entry into place between the judgement and the taking.
    pruneGraphCache(stateDir, keep, {
      beforeTake: (path) => {
        writeFileSync(`${path}.new`, 'new');
        renameSync(`${path}.new`, path);
      },
    });
    assert.equal(readFileSync(old, 'utf8'), 'new');
    assert.deepEqual(readdirSync(cacheDir).sort(), [old, keep].map((p) => p.slice(cacheDir.length + 1)).sort());
    // Unchanged since the judgement: removed.
    utimesSync(old, longAgo, longAgo);
    pruneGraphCache(stateDir, keep);
    assert.deepEqual(readdirSync(cacheDir), [keep.slice(cacheDir.length + 1)]);
  });

  test('values JSON cannot carry exactly are never cached', async () => {
    assert.equal(exactJson({ a: [1, 'x', null, true, { b: 2.5 }], '__proto__': 1 }, 0), true);
    const bad: unknown[] = [undefined, NaN, Infinity, -0, 1n, new Date(0), Buffer.from('x'), new Map(), [undefined], holey(), { a: undefined }, Object.create(null), () => 1, Symbol('s')];
    bad.forEach((v, i) => assert.equal(exactJson({ p: v }, 0), false, `bad[${i}]`));
    // A kind whose schema makes a Date: the graph builds, and is not cached.
    const dated: AnyResourceKind = { ...(builtinKinds.find((k) => k.kind === 'noop') as AnyResourceKind), schema: z.object({}).transform(() => ({ at: new Date(0) })) };
    const reg = createRegistry(builtinKinds.map((k) => (k.kind === 'noop' ? dated : k)));
    const stateDir = join(dir, 'inexact');
    const file = join(dir, 'dated.yaml');
    const text = 'resources:\n  - { kind: noop, name: n }\n';
    const raw = parseGraphText(file, text);
    const why = await writeCachedGraph({ stateDir, file, text, build: BUILD }, raw, buildGraph(raw, reg));
    assert.match(why ?? '', /noop\[n\]: its parameters hold a value JSON cannot carry exactly/);
    assert.equal(existsSync(cachePath(stateDir, file)), false);
  });

  /** A well-formed entry for `text` whose graph says "evil": used only if an untrusted file were believed. */
  async function forged(stateDir: string, file: string, text: string): Promise<void> {
    const g = build(file, text.replace('good', 'evil'));
    assert.equal(await writeCachedGraph({ stateDir, file, text, build: BUILD }, g.raw, g.graph), undefined);
    const got = await hit({ stateDir, file, text, build: BUILD });
    assert.equal((got.vertices.values().next().value?.params as { content: string }).content, 'evil', 'the forged entry would be used if trusted');
  }

  const untrusted: [string, (path: string, stateDir: string) => Promise<void>, RegExp][] = [
    [
      'corrupt',
      async (path) => {
        const t = await readFile(path, 'utf8');
        await writeFile(path, t.replace('"evil"', '"eviL"'), { mode: 0o600 });
      },
      /checksum/,
    ],
    ['truncated', async (path) => writeFile(path, (await readFile(path, 'utf8')).slice(0, -20), { mode: 0o600 }), /checksum/],
    ['empty', async (path) => writeFile(path, '', { mode: 0o600 }), /not a cache file/],
    [
      'a symlink',
      async (path, stateDir) => {
        await rename(path, join(stateDir, 'elsewhere.json'));
        await symlink(join(stateDir, 'elsewhere.json'), path);
      },
      /symlink/,
    ],
    ['group-writable', async (path) => chmod(path, 0o620), /writable by group or others/],
    ['writable by others', async (path) => chmod(path, 0o602), /writable by group or others/],
    ['owned by another user (nobody)', async (path) => chown(path, 65534, 65534), /owned by uid 65534/],
    ['hard-linked from elsewhere', async (path, stateDir) => link(path, join(stateDir, 'second-name.json')), /2 links/],
    ['a directory', async (path) => rm(path).then(() => mkdir(path)), /not a regular file/],
    [
      'in a directory that is a symlink',
      async (_path, cacheDir) => {
        await rename(cacheDir, `${cacheDir}.real`);
        await symlink(`${cacheDir}.real`, cacheDir);
      },
      /not a private directory/,
    ],
    ['in a group-writable directory', async (_path, cacheDir) => chmod(cacheDir, 0o770), /not a private directory/],
  ];
  for (const [what, spoil, why] of untrusted) {
    test(`an entry that is ${what} is ignored, and the graph source parses instead`, { skip: process.getuid?.() !== 0 && what.includes('nobody') ? 'needs root to chown' : false }, async () => {
      const stateDir = join(dir, `untrusted-${what.replace(/\W+/g, '-')}`);
      const file = join(dir, `u-${what.replace(/\W+/g, '-')}.yaml`);
      const text = `resources:\n  - { kind: file, name: ${dir}/u, content: "good" }\n${PAD}`;
      await writeFile(file, text);
      await forged(stateDir, file, text);
      await spoil(cachePath(stateDir, file), join(stateDir, 'graph-cache'));
      assert.match(await miss({ stateDir, file, text, build: BUILD }), why);
      const lines: string[] = [];
      const src = new GraphSource({ file, host: 'h', registry, log: createLogger({ level: 'debug', write: (l) => lines.push(l) }), stateDir, cluster: { etcd: [], cluster: 'c', labels: {} }, version: 't', cacheBuild: BUILD });
      try {
        const g = await src.render();
        assert.equal((g.vertices.values().next().value?.params as { content: string }).content, 'good');
        assert.ok(lines.some((l) => l.includes(`parsed ${file}`)), 'parsed the file');
      } finally {
        await src.close();
      }
    });
  }

  test('the graph source: the second render of an unchanged file is a hit, an edit misses and is kept, errors are never kept', async () => {
    const stateDir = join(dir, 'source');
    const file = join(dir, 's.yaml');
    const lines: string[] = [];
    const log = createLogger({ level: 'debug', write: (l) => lines.push(l) });
    const open = (): GraphSource => new GraphSource({ file, host: 'h', registry, log, stateDir, cluster: { etcd: [], cluster: 'c', labels: {} }, version: 't', cacheBuild: BUILD });
    const render = async (): Promise<Graph> => {
      const src = open();
      try {
        const g = await src.render();
        // What the agent does once its engine runs the graph: only then is it kept.
        src.publish(g);
        return g;
      } finally {
        await src.close();
      }
    };
    const parses = (): number => lines.filter((l) => l.includes(`parsed ${file}`)).length;
    await writeFile(file, richGraph(dir));
    const first = await render();
    assert.equal(parses(), 1);
    const second = await render();
    assert.equal(parses(), 1, 'the second run did not parse');
    assert.deepEqual(project(second), project(first));
    await writeFile(file, richGraph(dir).replace('"a\\n"', '"b\\n"'));
    const third = await render();
    assert.equal(parses(), 2, 'the edit was parsed');
    assert.equal(([...third.vertices.values()][1]?.params as { content: string }).content, 'b\n');
    await render();
    assert.equal(parses(), 2, 'and kept');

    // A graph with an error: reported with its file:line on every run, never kept.
    await writeFile(file, `resources:\n  - kind: file\n    name: ${dir}/x\n    contnt: "a"\n${PAD}`);
    for (let i = 0; i < 2; i++) {
      await assert.rejects(render(), (err: unknown) => err instanceof ValidationErrors && err.errors.some((e) => e.where?.file === file && e.where.line === 4));
    }
    assert.equal(parses(), 4, 'parsed each time');
    assert.match(await miss({ stateDir, file, text: readFileSync(file, 'utf8'), build: BUILD }), /another text/);

    // What a hit cannot know (exports, collect rules, the cluster store) is never kept.
    for (const g of [
      `resources:\n  - { kind: file, name: ${dir}/e, content: "x", export: true }\n${PAD}`,
      `resources: []\ncollect:\n  - { kind: file, set: { path: "${dir}/{basename}" } }\n${PAD}`,
    ]) {
      await writeFile(file, g);
      const before = parses();
      const src = open();
      // Exports and collect rules open the embedded store in the state dir; only the cache matters here.
      await src.render().catch(() => undefined);
      await src.close();
      assert.equal(parses(), before + 1);
      assert.match(await miss({ stateDir, file, text: g, build: BUILD }), /another text/);
    }
  });

  test('a graph is kept only once the engine runs it (publish): rendered and never run, it is not', async () => {
    const stateDir = join(dir, 'unpublished');
    const file = join(dir, 'unpublished.yaml');
    const text = `resources:\n  - { kind: file, name: ${dir}/up, content: "x" }\n${PAD}`;
    await writeFile(file, text);
    const open = (): GraphSource => new GraphSource({ file, host: 'h', registry, log: createLogger({ level: 'silent' }), stateDir, cluster: { etcd: [], cluster: 'c', labels: {} }, version: 't', cacheBuild: BUILD });
    const src = open();
    await src.render();
    await src.close();
    assert.match(await miss({ stateDir, file, text, build: BUILD }), /none yet/, 'rendered only: nothing written');
    const again = open();
    const g = await again.render();
    again.publish(g);
    await again.close();
    await hit({ stateDir, file, text, build: BUILD });
  });

  test('--no-watch-graph: after a hit, later renders keep to the text the hit was made from', async () => {
    const stateDir = join(dir, 'pinned');
    const file = join(dir, 'p.yaml');
    const graph = (c: string): string => `resources:\n  - { kind: file, name: ${dir}/p, content: "${c}" }\n${PAD}`;
    await writeFile(file, graph('one'));
    const g = build(file, graph('one'));
    assert.equal(await writeCachedGraph({ stateDir, file, text: graph('one'), build: BUILD }, g.raw, g.graph), undefined);
    const lines: string[] = [];
    const src = new GraphSource({ file, host: 'h', registry, log: createLogger({ level: 'debug', write: (l) => lines.push(l) }), stateDir, cluster: { etcd: [], cluster: 'c', labels: {} }, version: 't', cacheBuild: BUILD, pinFile: true });
    try {
      const content = (x: Graph): string => (x.vertices.values().next().value?.params as { content: string }).content;
      assert.equal(content(await src.render()), 'one');
      assert.ok(lines.some((l) => l.includes('graph cache: 1 validated resources')), 'a hit');
      await writeFile(file, graph('two'));
      assert.equal(content(await src.render()), 'one', 'a re-render (for cluster data) does not read the edited file');
    } finally {
      await src.close();
    }
  });

  test('no build id (run from source, or a registry of other kinds): nothing is cached', async () => {
    const stateDir = join(dir, 'nobuild');
    const file = join(dir, 'n.yaml');
    await writeFile(file, `resources:\n  - { kind: file, name: ${dir}/n, content: "x" }\n${PAD}`);
    for (const opts of [{}, { cacheBuild: BUILD, registry: createRegistry(builtinKinds.map((k) => (k.kind === 'file' ? { ...k } : k))) }, { cacheBuild: BUILD, registry: createRegistry(builtinKinds.filter((k) => k.kind !== 'kv')) }]) {
      const src = new GraphSource({ file, host: 'h', registry, log: createLogger({ level: 'silent' }), stateDir, cluster: { etcd: [], cluster: 'c', labels: {} }, version: 't', ...opts });
      await src.render();
      await src.close();
    }
    assert.equal(existsSync(join(stateDir, 'graph-cache')), false);
  });

  test('a graph shorter than CACHE_MIN_BYTES is parsed every time, never cached', async () => {
    const stateDir = join(dir, 'small');
    const file = join(dir, 'small.yaml');
    await writeFile(file, `resources:\n  - { kind: file, name: ${dir}/small, content: "x" }\n`);
    const lines: string[] = [];
    for (let i = 0; i < 2; i++) {
      const src = new GraphSource({ file, host: 'h', registry, log: createLogger({ level: 'debug', write: (l) => lines.push(l) }), stateDir, cluster: { etcd: [], cluster: 'c', labels: {} }, version: 't', cacheBuild: BUILD });
      await src.render();
      await src.close();
    }
    assert.equal(lines.filter((l) => l.includes(`parsed ${file}`)).length, 2);
    assert.equal(existsSync(join(stateDir, 'graph-cache')), false);
  });
});

describe('validated-graph cache, through the real CLI', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bp-gcache-cli-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const args = (file: string, stateDir: string): string[] => ['run', '--file', file, '--converged-timeout', '0', '--no-api', '--state-dir', stateDir, '--log-level', 'debug'];
  const run = (file: string, stateDir: string): ReturnType<typeof runCli> => runCli(args(file, stateDir), { timeoutMs: 60_000 });
  /** The CLI of another dist/ directory (its launcher). */
  const runOther = (launcher: string, file: string, stateDir: string): Promise<{ code: number | null; stderr: string }> =>
    new Promise((resolve, reject) => {
      const p = spawn(process.execPath, [launcher, ...args(file, stateDir)], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      p.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      p.once('error', reject);
      p.once('close', (code) => resolve({ code, stderr }));
    });

  test('a one-shot run keeps the graph, the next one uses it, an edit or another build misses', async () => {
    const file = join(dir, 'g.yaml');
    const stateDir = join(dir, 'state');
    const graph = (c: string): string => `resources:\n${[1, 2, 3].map((i) => `  - { kind: file, name: ${dir}/f${i}, content: "${c}${i}" }\n`).join('')}${PAD}`;
    await writeFile(file, graph('a'));
    const first = await run(file, stateDir);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /graph cache: not used .*: none yet/);
    assert.match(first.stderr, /graph cache: kept 3 validated resources/);
    const second = await run(file, stateDir);
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stderr, /graph cache: 3 validated resources of/);
    assert.doesNotMatch(second.stderr, /parsed /);
    await writeFile(file, graph('b'));
    const third = await run(file, stateDir);
    assert.equal(third.code, 0, third.stderr);
    assert.match(third.stderr, /graph cache: not used .*another text, path or build/);
    assert.equal(readFileSync(join(dir, 'f2'), 'utf8'), 'b2');

    // The same CLI with another build id (a copy of dist/ whose id differs): a miss, and its own entry after.
    const other = join(dir, 'dist');
    cpSync(join(ROOT, 'dist'), other, { recursive: true });
    const cli = join(other, 'backplane-cli.js');
    const text = readFileSync(cli, 'latin1');
    await writeFile(cli, text.replace(/backplane-build=([0-9a-f])/, (_m, c: string) => `backplane-build=${c === '0' ? '1' : '0'}`), 'latin1');
    const fourth = await runOther(join(other, 'backplane.cjs'), file, stateDir);
    assert.equal(fourth.code, 0, fourth.stderr);
    assert.match(fourth.stderr, /graph cache: not used .*another text, path or build/);
    const fifth = await run(file, stateDir);
    assert.match(fifth.stderr, /graph cache: not used .*another text, path or build/, 'and back: the real build misses the copy\'s entry');
  });

  test('a graph with an error is never cached: every run reports its file:line', async () => {
    const file = join(dir, 'bad.yaml');
    const stateDir = join(dir, 'state-bad');
    // First the graph as it was before the typo: kept.
    await writeFile(file, `resources:\n  - kind: file\n    name: ${dir}/x\n    content: "a"\n${PAD}`);
    const good = await run(file, stateDir);
    assert.match(good.stderr, /graph cache: kept 1 validated/);
    const entry = cachePath(stateDir, file);
    const kept = readFileSync(entry, 'utf8');
    await writeFile(file, `resources:\n  - kind: file\n    name: ${dir}/x\n    contnt: "a"\n${PAD}`);
    for (let i = 0; i < 2; i++) {
      const r = await run(file, stateDir);
      assert.equal(r.code, 2, r.stderr);
      assert.ok(r.stderr.includes(`${file}:4:5: file[${dir}/x]: unknown parameter "contnt"`), r.stderr);
      assert.doesNotMatch(r.stderr, /graph cache: kept/);
    }
    assert.equal(readFileSync(entry, 'utf8'), kept, 'the entry of the good text is left as it was');
    assert.deepEqual(readdirSync(join(stateDir, 'graph-cache')), [entry.slice(entry.lastIndexOf('/') + 1)]);
  });
});
