import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { harness, until, waitSettled, withTempDir } from '../helpers/engine.js';
import { Engine } from '../../src/engine/engine.js';
import { parseGraphText } from '../../src/frontends/load.js';
import { buildGraph } from '../../src/graph/build.js';
import type { Graph } from '../../src/graph/graph.js';
import { createLogger } from '../../src/log.js';
import { fileKind } from '../../src/resources/file.js';
import type { FileParams } from '../../src/resources/file-schema.js';
import { createRegistry } from '../../src/resources/registry.js';
import type { AnyResourceKind } from '../../src/resources/types.js';
import { ProbeWorld, probeKind } from '../helpers/probe-kind.js';
import type { Worker } from '../../src/engine/worker.js';
import { defineKind, type AttachedWatchContext } from '../../src/resources/types.js';
import { z } from 'zod';

/** Workers made so far (inside view): status() lists every vertex, with or without one. */
function workerCount(engine: Engine): number {
  return (engine as unknown as { workers: Map<string, Worker> }).workers.size;
}

function setup(opts: { noop?: boolean; parallel?: number; watch?: boolean } = {}) {
  const world = new ProbeWorld();
  const h = harness([probeKind(world)], opts);
  return { world, ...h };
}

describe('engine', () => {
  test('a resource runs only after its dependencies converged; independent ones run at once', async () => {
    const { world, engine, graph, settled } = setup();
    await engine.setGraph(
      graph(`
resources:
  - { kind: probe, name: a, ms: 150 }
  - { kind: probe, name: b, ms: 150, require: [probe:a] }
  - { kind: probe, name: c, ms: 150 }
`),
    );
    await settled();
    const aDone = world.of('a', 'done')[0]?.t ?? NaN;
    const bStart = world.of('b', 'check')[0]?.t ?? NaN;
    const cStart = world.of('c', 'check')[0]?.t ?? NaN;
    const aStart = world.of('a', 'check')[0]?.t ?? NaN;
    assert.ok(bStart >= aDone, 'b started before a was done');
    assert.ok(Math.abs(cStart - aStart) < 100, 'c did not start alongside a');
    assert.equal(world.maxRunning, 2);
    assert.equal(engine.summary().ok, true);
    await engine.stop();
  });

  test('a drift event re-checks only the drifted resource and what depends on it', async () => {
    const { world, engine, graph, settled } = setup();
    await engine.setGraph(
      graph(`
resources:
  - { kind: probe, name: a }
  - { kind: probe, name: b, require: [probe:a] }
  - { kind: probe, name: other }
`),
    );
    await settled();
    const before = world.events.length;
    world.drift('a');
    await until(() => world.of('b', 'done').length === 2, 2000, 'b re-run after a changed');
    await settled();
    const after = world.events.slice(before).filter((e) => e.type === 'check').map((e) => e.name);
    assert.deepEqual(after, ['a', 'b']);
    assert.equal(world.actual.get('a'), 'ok');
    await engine.stop();
  });

  test('an event that changes nothing does not re-run dependents', async () => {
    const { world, engine, graph, settled } = setup();
    await engine.setGraph(graph(`resources:\n  - { kind: probe, name: a }\n  - { kind: probe, name: b, require: [probe:a] }\n`));
    await settled();
    world.bus.emit('a'); // spurious event: a is still converged
    await until(() => world.of('a', 'done').length === 2, 2000, 'a re-checked');
    await settled();
    assert.equal(world.of('b', 'check').length, 1);
    await engine.stop();
  });

  test('notify edges refresh the target only when the source changed something', async () => {
    const { world, engine, graph, settled } = setup();
    world.actual.set('src', 'ok');
    world.actual.set('dst', 'ok');
    await engine.setGraph(graph(`resources:\n  - { kind: probe, name: src, notify: [probe:dst] }\n  - { kind: probe, name: dst }\n`));
    await settled();
    assert.equal(world.of('dst', 'check').filter((e) => e.refresh === true).length, 0);
    world.drift('src');
    await until(() => world.of('dst', 'check').some((e) => e.refresh === true), 2000, 'dst refreshed');
    await settled();
    await engine.stop();
  });

  test('retries per metaparams, then fails; dependents are blocked and say why', async () => {
    const { world, engine, graph, settled } = setup();
    world.failures.set('flaky', 5);
    await engine.setGraph(
      graph(`
resources:
  - { kind: probe, name: flaky, meta: { retry: 2, delay: 50ms } }
  - { kind: probe, name: dep, require: [probe:flaky] }
  - { kind: probe, name: fine }
`),
    );
    await settled();
    assert.equal(world.of('flaky', 'fail').length, 3, 'one try plus two retries');
    const s = engine.summary();
    assert.equal(s.ok, false);
    assert.deepEqual(s.failed.map((f) => f.id), ['probe[flaky]']);
    assert.match(s.failed[0]?.error ?? '', /failing on purpose/);
    assert.deepEqual(s.blocked.map((b) => [b.id, b.blockedBy]), [['probe[dep]', 'probe[flaky]']]);
    assert.equal(world.of('dep', 'check').length, 0, 'a blocked resource is never applied');
    // The failure goes away and an event arrives: the resource gets fresh retries and the dependent runs.
    world.failures.set('flaky', 0);
    world.drift('flaky');
    await until(() => world.of('dep', 'done').length === 1, 2000, 'dep ran after flaky recovered');
    await settled();
    assert.equal(engine.summary().ok, true);
    await engine.stop();
  });

  test('a retry that succeeds converges without failing', async () => {
    const { world, engine, graph, settled } = setup();
    world.failures.set('x', 2);
    await engine.setGraph(graph(`resources:\n  - { kind: probe, name: x, meta: { retry: 3, delay: 0 } }\n`));
    await settled();
    assert.equal(engine.summary().ok, true);
    assert.equal(world.of('x', 'fail').length, 2);
    await engine.stop();
  });

  test('--parallel limits how many resources run at once', async () => {
    const { world, engine, graph, settled } = setup({ parallel: 2 });
    const items = Array.from({ length: 6 }, (_, i) => `  - { kind: probe, name: p${i}, ms: 40 }`).join('\n');
    await engine.setGraph(graph(`resources:\n${items}\n`));
    await settled();
    assert.equal(world.maxRunning, 2);
    await engine.stop();
  });

  test('named semaphores serialize the resources that share them', async () => {
    const { world, engine, graph, settled } = setup();
    const items = Array.from({ length: 4 }, (_, i) => `  - { kind: probe, name: s${i}, ms: 40, meta: { sema: ["lock:1"] } }`).join('\n');
    await engine.setGraph(graph(`resources:\n${items}\n  - { kind: probe, name: free, ms: 40 }\n`));
    await settled();
    assert.equal(world.maxRunning, 2, 'one lock holder plus the free resource');
    await engine.stop();
  });

  test('poll re-checks a resource on an interval', async () => {
    const { world, engine, graph, settled } = setup();
    await engine.setGraph(graph(`resources:\n  - { kind: probe, name: p, watch: false, meta: { poll: 30ms } }\n`));
    await settled();
    await until(() => world.of('p', 'check').length >= 4, 2000, 'polled checks');
    await engine.stop();
  });

  test('an engine that checks once (watch: false) starts no watch and no poll, and still orders and applies', async () => {
    const { world, engine, graph, settled } = setup({ watch: false });
    await engine.setGraph(graph(`resources:\n  - { kind: probe, name: a }\n  - { kind: probe, name: b, require: [probe:a] }\n  - { kind: probe, name: p, meta: { poll: 20ms } }\n`));
    await settled();
    assert.equal(world.actual.get('b'), 'ok');
    assert.ok((world.of('b', 'check')[0]?.t ?? NaN) >= (world.of('a', 'done')[0]?.t ?? NaN), 'b ran before a was done');
    assert.deepEqual(world.events.filter((e) => e.type === 'watch-start'), [], 'a watch was started');
    // A drift nobody watches is not seen, and a poll interval passes without a re-check.
    world.drift('a');
    await new Promise((r) => setTimeout(r, 120));
    assert.equal(world.of('a', 'check').length, 1);
    assert.equal(world.of('p', 'check').length, 1, 'the poll re-checked');
    await engine.stop();
  });

  test('noop mode changes nothing and reports what would change', async () => {
    const { world, engine, graph, settled } = setup({ noop: true });
    await engine.setGraph(graph(`resources:\n  - { kind: probe, name: a }\n  - { kind: probe, name: b, require: [probe:a] }\n`));
    await settled();
    assert.equal(world.actual.get('a'), undefined);
    assert.ok(world.of('a', 'check').every((e) => e.apply === false));
    assert.deepEqual(engine.summary().wouldChange.map((s) => s.id).sort(), ['probe[a]', 'probe[b]']);
    await engine.stop();
  });

  test('meta noop protects one resource while the rest is applied', async () => {
    const { world, engine, graph, settled } = setup();
    await engine.setGraph(graph(`resources:\n  - { kind: probe, name: a, meta: { noop: true } }\n  - { kind: probe, name: b }\n`));
    await settled();
    assert.equal(world.actual.get('a'), undefined);
    assert.equal(world.actual.get('b'), 'ok');
    await engine.stop();
  });

  test('graph swap: unchanged resources keep running untouched, changed ones and their dependents re-run, removed ones stop', async () => {
    const { world, engine, graph, settled } = setup();
    await engine.setGraph(
      graph(`
resources:
  - { kind: probe, name: keep }
  - { kind: probe, name: change }
  - { kind: probe, name: downstream, require: [probe:change] }
  - { kind: probe, name: gone }
`),
    );
    await settled();
    const mark = world.events.length;
    const swap = await engine.setGraph(
      graph(`
resources:
  - { kind: probe, name: keep }
  - { kind: probe, name: change, want: v2 }
  - { kind: probe, name: downstream, require: [probe:change] }
  - { kind: probe, name: new }
`),
    );
    assert.deepEqual(swap.changed, ['probe[change]']);
    assert.deepEqual(swap.removed, ['probe[gone]']);
    assert.deepEqual(swap.added, ['probe[new]']);
    await settled();
    const since = world.events.slice(mark);
    assert.equal(since.filter((e) => e.name === 'keep').length, 0, 'keep was not touched (no check, no watch restart)');
    assert.ok(since.some((e) => e.name === 'gone' && e.type === 'watch-stop'), 'gone stopped watching');
    assert.equal(world.actual.get('change'), 'v2');
    assert.ok(since.some((e) => e.name === 'downstream' && e.type === 'check'), 'dependent re-ran');
    assert.ok(since.some((e) => e.name === 'new' && e.type === 'done'));
    // A removed resource is no longer managed: its drift is ignored.
    world.drift('gone');
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(world.of('gone', 'check').length, 1);
    await engine.stop();
  });

  test('a worker makes its signal only when asked for it, and one asked for after the stop is aborted already', async () => {
    // A kind whose checks never look at their signal: a one-shot run's workers then need no AbortController at all
    // (one each, made and aborted one by one at exit, was most of a 1,000-file run's shutdown).
    const seen: AbortSignal[] = [];
    let late: (() => void) | undefined;
    const quiet = defineKind({
      kind: 'quiet',
      description: 'test: converged, never reads its signal unless told to',
      schema: z.strictObject({ ask: z.boolean().default(false) }),
      create: (_id, p) => ({
        checkApply: (ctx) => {
          if (p.ask) late = () => seen.push(ctx.signal);
          return Promise.resolve({ converged: true, changes: [] });
        },
      }),
    });
    const h = harness([quiet], { watch: false });
    const made = await countAbortControllers(async () => {
      const yaml = Array.from({ length: 50 }, (_, i) => `  - { kind: quiet, name: q${i} }`).join('\n');
      await h.engine.setGraph(h.graph(`resources:\n${yaml}\n  - { kind: quiet, name: asks, ask: true }\n`));
      await h.settled();
      await h.engine.stop();
    });
    assert.ok(made <= 2, `${made} AbortControllers for 51 workers that never asked for a signal`);
    assert.equal(h.engine.status().filter((s) => s.state !== 'stopped').length, 0);
    late?.();
    assert.equal(seen.length, 1);
    assert.equal(seen[0]?.aborted, true, 'a signal first asked for after the stop was not aborted');
  });

  test('prepare is called once as a worker starts, before its dependencies are done, and never in noop mode', async () => {
    const events: string[] = [];
    // The checks waiting to be released.
    const held: (() => void)[] = [];
    const gated = defineKind({
      kind: 'gated',
      description: 'test: a check that waits to be released, and a prepare hook',
      startEarly: true,
      schema: z.strictObject({ wait: z.boolean().default(false) }),
      create: (id, p) => ({
        prepare: () => void events.push(`prepare ${id}`),
        checkApply: async () => {
          if (p.wait) await new Promise<void>((resolve) => held.push(resolve));
          events.push(`check ${id}`);
          return { converged: true, changes: [] };
        },
      }),
    });
    const graph = 'resources:\n  - { kind: gated, name: dep, wait: true }\n  - { kind: gated, name: after, require: ["gated[dep]"] }\n';
    const h = harness([gated], { watch: false });
    await h.engine.setGraph(h.graph(graph));
    await until(() => held.length > 0);
    assert.deepEqual(events.slice().sort(), ['prepare gated[after]', 'prepare gated[dep]'], 'the dependent was not prepared while its dependency ran');
    held.shift()?.();
    await h.settled();
    assert.deepEqual(events.slice(2), ['check gated[dep]', 'check gated[after]']);
    await h.engine.stop();
    // Preparing may make private state (svc starts a logger): a dry run makes none.
    events.length = 0;
    const dry = harness([gated], { watch: false, noop: true });
    await dry.engine.setGraph(dry.graph(graph));
    await until(() => held.length > 0);
    held.shift()?.();
    await dry.settled();
    assert.deepEqual(events, ['check gated[dep]', 'check gated[after]']);
    await dry.engine.stop();
  });

  test('a kind with attachWatch is attached before its first check, detached at stop, and re-attached after a failure', async () => {
    // The file kind's watch: no signal, no promise per worker (100,000 AbortControllers with their listeners were
    // ~100 MiB and ~1 s of an agent's exit). Stopping detaches each synchronously.
    const events: string[] = [];
    const hooks = new Map<string, AttachedWatchContext>();
    let attachments = 0;
    const attached = defineKind({
      kind: 'attached',
      description: 'test: a watch through attachWatch/detachWatch',
      schema: z.strictObject({ fail: z.boolean().default(false) }),
      create: (id, p) => ({
        attachWatch: (ctx) => {
          events.push(`attach ${id}`);
          hooks.set(id, ctx);
          // The first attachment of `fail` breaks after it was ready: detached, attached again after the back-off.
          if (p.fail && attachments++ === 0) {
            ctx.ready();
            setTimeout(() => ctx.failed(new Error('boom')), 5);
          } else if (p.fail) setTimeout(() => ctx.ready(), 5);
          else ctx.ready();
        },
        detachWatch: () => void events.push(`detach ${id}`),
        checkApply: () => {
          events.push(`check ${id}`);
          return Promise.resolve({ converged: true, changes: [] });
        },
      }),
    });
    const h = harness([attached]);
    const made = await countAbortControllers(async () => {
      await h.engine.setGraph(h.graph('resources:\n  - { kind: attached, name: a }\n  - { kind: attached, name: f, fail: true }\n'));
      await h.settled();
      assert.deepEqual(events.filter((e) => e.includes('attached[a]')), ['attach attached[a]', 'check attached[a]']);
      const first = hooks.get('attached[a]');
      first?.changed('x changed');
      await until(() => events.filter((e) => e === 'check attached[a]').length === 2, 2000, 'a re-checked on its watch event');
      await until(() => events.filter((e) => e === 'attach attached[f]').length === 2, 3000, 'f attached again after its failure');
      assert.deepEqual(
        events.filter((e) => e.includes('attached[f]')).slice(0, 3),
        ['attach attached[f]', 'check attached[f]', 'detach attached[f]'],
        'the failed attachment was detached before the next one',
      );
      assert.ok(h.lines.some((l) => /attached\[f\].*watch failed, restarting in 500ms: boom/.test(l)), h.lines.join('\n'));
      await until(() => events.filter((e) => e === 'check attached[f]').length === 2, 2000, 'f re-checked once re-attached');
      await h.settled();
      await h.engine.stop();
    });
    assert.equal(made, 0, `${made} AbortControllers made for watches and checks that never asked for a signal`);
    assert.equal(events.filter((e) => e.startsWith('detach')).length, 3, events.join(', '));
    assert.equal(h.engine.status().filter((s) => s.state !== 'stopped').length, 0);
    // Events through a detached watch's hooks are ignored.
    const checks = events.length;
    hooks.get('attached[a]')?.changed('after the stop');
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(events.length, checks);
  });

  test('files written and watched by an agent engine make no AbortController: their writes read `aborted`, not a signal', async () => {
    await withTempDir(async (dir) => {
      // The directory exists: a directory is created through the general path, which takes the signal.
      await mkdir(join(dir, 'd'));
      const h = harness([], { watch: true });
      const made = await countAbortControllers(async () => {
        const files = Array.from({ length: 20 }, (_, i) => `  - { kind: file, name: ${dir}/d/f${i}, content: "x${i}" }`).join('\n');
        await h.engine.setGraph(h.graph(`resources:\n  - { kind: file, name: ${dir}/d, type: directory }\n${files}\n`));
        await h.settled();
        await h.engine.stop();
      });
      assert.equal((await readdir(join(dir, 'd'))).length, 20);
      assert.equal(made, 0, `${made} AbortControllers for 21 files created and watched`);
    });
  });

  test('close tells a resource why it stops: removed, replaced or shutdown', async () => {
    const { world, engine, graph, settled } = setup();
    await engine.setGraph(graph(`resources:\n  - { kind: probe, name: a }\n  - { kind: probe, name: b }\n  - { kind: probe, name: c }\n`));
    await settled();
    await engine.setGraph(graph(`resources:\n  - { kind: probe, name: a, want: v2 }\n  - { kind: probe, name: c }\n`));
    await settled();
    await engine.stop();
    const reasons = Object.fromEntries(['a', 'b', 'c'].map((n) => [n, world.of(n, 'close').map((e) => e.reason)]));
    assert.deepEqual(reasons, { a: ['replaced', 'shutdown'], b: ['removed'], c: ['shutdown'] });
  });

  test('a new edge makes the dependent re-run after its new dependency', async () => {
    const { world, engine, graph, settled } = setup();
    await engine.setGraph(graph(`resources:\n  - { kind: probe, name: a }\n  - { kind: probe, name: b }\n`));
    await settled();
    await engine.setGraph(graph(`resources:\n  - { kind: probe, name: a }\n  - { kind: probe, name: b, require: [probe:a] }\n`));
    await settled();
    assert.equal(world.of('b', 'check').length, 2);
    assert.equal(world.of('a', 'check').length, 1);
    await engine.stop();
  });

  test('stop aborts in-flight work promptly', async () => {
    const { world, engine, graph } = setup();
    await engine.setGraph(graph(`resources:\n  - { kind: probe, name: slow, ms: 10000 }\n`));
    await until(() => world.running === 1, 2000, 'slow started');
    const t0 = performance.now();
    await engine.stop();
    assert.ok(performance.now() - t0 < 500, 'stop took too long');
    assert.equal(world.running, 0);
    assert.ok(world.of('slow', 'watch-stop').length === 1);
  });

  test('events arriving during a run are coalesced into one more run', async () => {
    const { world, engine, graph, settled } = setup();
    await engine.setGraph(graph(`resources:\n  - { kind: probe, name: a, ms: 100 }\n`));
    await until(() => world.running === 1, 2000, 'a started');
    for (let i = 0; i < 20; i++) world.bus.emit('a');
    await settled();
    assert.equal(world.of('a', 'check').length, 2);
    await engine.stop();
  });

  test('a purging directory drops the file of a resource removed from the graph, with no event from the directory', async () => {
    await withTempDir(async (dir) => {
      const { engine, graph, settled } = harness();
      const g = (...names: string[]): string =>
        `resources:\n  - { kind: file, name: ${dir}/in, type: directory, purge: true }\n` +
        names.map((n) => `  - { kind: file, name: ${dir}/in/${n}, content: "${n}" }\n`).join('');
      try {
        await engine.setGraph(graph(g('a', 'b', 'c')));
        await settled();
        assert.deepEqual((await readdir(`${dir}/in`)).sort(), ['a', 'b', 'c']);
        // Removing resources touches nothing in the directory: only the swap can tell it to look again.
        const swap = await engine.setGraph(graph(g('a')));
        assert.deepEqual([...swap.removed].sort(), [`file[${dir}/in/b]`, `file[${dir}/in/c]`]);
        await until(async () => (await readdir(`${dir}/in`)).join() === 'a', 3000, 'b and c purged after the swap');
        await settled();
        // Changing a collected file's path (a redefinition) leaves no stale entry either.
        await engine.setGraph(graph(g('a').replace(`name: ${dir}/in/a,`, `name: ${dir}/in/a, path: ${dir}/in/a2,`)));
        await until(async () => (await readdir(`${dir}/in`)).join() === 'a2', 3000, 'old path purged after the redefinition');
        await writeFile(`${dir}/in/stray`, 'x');
        await until(async () => (await readdir(`${dir}/in`)).join() === 'a2', 3000, 'stray purged');
      } finally {
        await engine.stop();
      }
    });
  });

  test('a purging directory is not checked again when files in it change content: neither the swap nor their writes wake it', async () => {
    await withTempDir(async (dir) => {
      const { engine, graph, settled } = harness();
      const g = (v: string): string =>
        `resources:\n  - { kind: file, name: ${dir}/in, type: directory, purge: true }\n` +
        ['a', 'b', 'c'].map((n) => `  - { kind: file, name: ${dir}/in/${n}, content: "${n} ${v}" }\n`).join('');
      const runs: string[] = [];
      const off = engine.onState((e) => {
        if (e.id === `file[${dir}/in]` && e.state === 'running') runs.push(e.prev);
      });
      try {
        await engine.setGraph(graph(g('v1')));
        await settled();
        const before = runs.length;
        const swap = await engine.setGraph(graph(g('v2')));
        assert.equal(swap.changed.length, 3);
        await until(async () => (await readFile(`${dir}/in/c`, 'utf8')) === 'c v2', 3000, 'the new content written');
        await settled();
        // Let the directory's watch deliver the writes' events (renames of temp files inside it) before counting.
        await new Promise((r) => setTimeout(r, 200));
        await settled();
        assert.equal(runs.length, before, 'the directory ran again for content changes of files it keeps');
        // Something it does not keep still wakes it at once, and is purged.
        await writeFile(`${dir}/in/stray`, 'x');
        await until(async () => (await readdir(`${dir}/in`)).sort().join() === 'a,b,c', 3000, 'stray purged');
        assert.ok(runs.length > before);
      } finally {
        off();
        await engine.stop();
      }
    });
  });

  test("after a swap the graph's provided keys are updated by what changed, not asked of every resource's kind again", async () => {
    await withTempDir(async (dir) => {
      let asked = 0;
      const counting: AnyResourceKind = {
        ...(fileKind as AnyResourceKind),
        autoEdges: (p) => {
          asked++;
          return fileKind.autoEdges?.(p as FileParams) ?? {};
        },
      };
      const registry = createRegistry([counting]);
      const engine = new Engine({ registry, log: createLogger({ level: 'silent' }) });
      const graph = (names: readonly string[], v: string): Graph =>
        buildGraph(
          parseGraphText(
            '/test/graph.yaml',
            `resources:\n  - { kind: file, name: ${dir}/in, type: directory, purge: true }\n` +
              names.map((n) => `  - { kind: file, name: ${dir}/in/${n}, content: "${n} ${v}" }\n`).join(''),
          ),
          registry,
        );
      const many = Array.from({ length: 40 }, (_, i) => `f${i}`);
      try {
        await engine.setGraph(graph(many, 'v1'));
        await waitSettled(engine);
        // Two files removed, one added (the build asks the kind about every resource: counted from the swap on).
        const next = graph([...many.slice(2), 'new'], 'v1');
        asked = 0;
        await engine.setGraph(next);
        await waitSettled(engine);
        await until(async () => (await readdir(`${dir}/in`)).length === 39, 3000, 'the removed files purged');
        assert.ok(asked <= 6, `the kind was asked ${asked} times for a swap of 3 resources in a graph of 41`);
        // Still exact: the removed files are purged, the added one kept, and a stray is purged.
        assert.ok((await readdir(`${dir}/in`)).includes('new'));
        await writeFile(`${dir}/in/stray`, 'x');
        await until(async () => !(await readdir(`${dir}/in`)).includes('stray'), 3000, 'the stray purged');
      } finally {
        await engine.stop();
      }
    });
  });

  test('a big graph starts in slices: work begins before the last worker exists, order and settling still hold', async () => {
    const { world, engine, graph, settled } = setup();
    // The first resource depends on the last one: it is started slices before its dependency exists.
    const n = 1600;
    const lines = ['resources:', `  - { kind: probe, name: r0, require: [probe:r${n - 1}] }`];
    for (let i = 1; i < n; i++) lines.push(`  - { kind: probe, name: r${i} }`);
    const g = graph(lines.join('\n') + '\n');
    let settledEarly = false;
    const off = engine.onSettledChange((s) => {
      if (s && workerCount(engine) < n) settledEarly = true;
    });
    let startedWhenFirstRan: number | undefined;
    const offState = engine.onState((e) => {
      if (startedWhenFirstRan === undefined && e.state === 'converged') startedWhenFirstRan = workerCount(engine);
    });
    await engine.setGraph(g);
    await settled(30_000);
    off();
    offState();
    assert.equal(settledEarly, false, 'the engine settled while workers were still being started');
    assert.ok(startedWhenFirstRan !== undefined && startedWhenFirstRan < n, `the first resource converged only once all ${n} workers existed`);
    const depDone = world.of(`r${n - 1}`, 'done')[0]?.t ?? NaN;
    const r0Start = world.of('r0', 'check')[0]?.t ?? NaN;
    assert.ok(r0Start >= depDone, 'r0 ran before its dependency (started in a later slice) was done');
    assert.equal(engine.summary().converged, n);
    // The progress line's counts are kept as states change, and agree with a full status walk.
    assert.deepEqual(engine.counts(), { total: n, converged: n, failed: 0, blocked: 0 });
    await engine.stop();

    // Independent resources that converge at once: every slice settles before the next one starts.
    const again = setup();
    let early = false;
    again.engine.onSettledChange((s) => {
      if (s && workerCount(again.engine) < n) early = true;
    });
    await again.engine.setGraph(again.graph(['resources:', ...Array.from({ length: n }, (_, i) => `  - { kind: probe, name: q${i} }`)].join('\n') + '\n'));
    await again.settled(30_000);
    assert.equal(early, false, 'the engine said it was settled while workers were still being started');
    assert.equal(again.engine.summary().converged, n);
    await again.engine.stop();
  });

  test('a vertex with many dependents wakes them in turns: the first finish before the last start, and all run', async () => {
    const { world, engine, graph, settled } = setup();
    // Woken all at once, 10,000 checks moved in lockstep: none finished before the last had started.
    const n = 10_000;
    // The root takes long enough for every dependent to be started and waiting on it when it converges.
    const lines = ['resources:', '  - { kind: probe, name: root, ms: 1500 }'];
    // Each check takes a timer's turn: checks started in one go all start before any of them is done.
    for (let i = 0; i < n; i++) lines.push(`  - { kind: probe, name: d${i}, ms: 1, require: [probe:root] }`);
    let settledEarly = false;
    const off = engine.onSettledChange((s) => {
      if (s && engine.summary().converged < n + 1) settledEarly = true;
    });
    await engine.setGraph(graph(lines.join('\n') + '\n'));
    await settled(60_000);
    off();
    assert.equal(settledEarly, false, 'the engine settled while dependents were still waiting to be woken');
    assert.equal(engine.summary().converged, n + 1);
    const deps = world.events.filter((e) => e.name.startsWith('d'));
    const firstDone = Math.min(...deps.filter((e) => e.type === 'done').map((e) => e.t));
    const lastCheck = Math.max(...deps.filter((e) => e.type === 'check').map((e) => e.t));
    const rootDone = world.of('root', 'done')[0]?.t ?? NaN;
    assert.ok(engine.status().length === n + 1 && Math.min(...deps.filter((e) => e.type === 'check').map((e) => e.t)) >= rootDone);
    assert.ok(firstDone < lastCheck, 'every dependent had started before the first one finished');
    await engine.stop();
  });

  test('a failed vertex with many dependents blocks every one of them before the engine settles', async () => {
    const { world, engine, graph, settled } = setup();
    const n = 500;
    world.failures.set('root', 1);
    const lines = ['resources:', '  - { kind: probe, name: root }'];
    for (let i = 0; i < n; i++) lines.push(`  - { kind: probe, name: d${i}, require: [probe:root] }`);
    let settledEarly = false;
    const off = engine.onSettledChange((s) => {
      if (s && engine.summary().blocked.length < n) settledEarly = true;
    });
    await engine.setGraph(graph(lines.join('\n') + '\n'));
    await settled(30_000);
    off();
    assert.equal(settledEarly, false);
    const s = engine.summary();
    assert.equal(s.failed.length, 1);
    assert.equal(s.blocked.length, n);
    assert.equal(world.events.filter((e) => e.name.startsWith('d') && e.type === 'check').length, 0, 'a blocked resource is never applied');
    await engine.stop();
  });

  test('a worker is started once its dependencies let it run; status, counts and countStates list the rest as pending', async () => {
    const { world, engine, graph, settled } = setup();
    const n = 100;
    const lines = ['resources:', '  - { kind: probe, name: root, ms: 300 }'];
    for (let i = 0; i < n; i++) lines.push(`  - { kind: probe, name: d${i}, require: [probe:root] }`);
    await engine.setGraph(graph(lines.join('\n') + '\n'));
    // The root runs; its dependents have no worker yet (100,000 of them made first held the first change back).
    assert.equal(workerCount(engine), 1);
    const status = engine.status();
    assert.equal(status.length, n + 1);
    assert.equal(status.filter((s) => s.state === 'pending' && s.runs === 0).length, n);
    assert.equal(engine.counts().total, n + 1);
    assert.equal(engine.countStates().get('probe')?.get('pending'), n);
    assert.equal(engine.settled, false);
    await settled();
    assert.equal(workerCount(engine), n + 1);
    assert.equal(engine.summary().converged, n + 1);
    const rootDone = world.of('root', 'done')[0]?.t ?? NaN;
    assert.ok(world.events.filter((e) => e.name.startsWith('d') && e.type === 'check').every((e) => e.t >= rootDone));
    await engine.stop();
  });

  test('stopping while dependents have no worker yet: they count as stopped, never run, and the engine settles', async () => {
    const { world, engine, graph } = setup();
    const lines = ['resources:', '  - { kind: probe, name: root, ms: 5000 }'];
    for (let i = 0; i < 10; i++) lines.push(`  - { kind: probe, name: d${i}, require: [probe:root] }`);
    await engine.setGraph(graph(lines.join('\n') + '\n'));
    await until(() => world.of('root', 'check').length === 1, 2000, 'root running');
    let settledAfterStop = false;
    engine.onSettledChange((s) => (settledAfterStop ||= s));
    await engine.stop();
    assert.equal(engine.settled, true);
    assert.equal(settledAfterStop, true);
    assert.deepEqual([...new Set(engine.status().map((s) => s.state))], ['stopped']);
    assert.equal(engine.counts().total, 11);
    assert.equal(engine.countStates().get('probe')?.get('stopped'), 11);
    assert.equal(world.events.filter((e) => e.name.startsWith('d')).length, 0);
  });

  test('a dependency going from one active state to another (running, retrying) wakes none of its dependents', async () => {
    const { world, engine, graph, settled } = setup();
    world.failures.set('root', 2);
    const lines = ['resources:', '  - { kind: probe, name: root, ms: 20, meta: { retry: 2, delay: 50ms } }'];
    for (let i = 0; i < 10; i++) lines.push(`  - { kind: probe, name: d${i}, require: [probe:root] }`);
    const inside = engine as unknown as { workers: Map<string, Worker>; mayStart(id: string): boolean };
    const mayStart = inside.mayStart.bind(engine);
    let whileActive = 0;
    inside.mayStart = (id) => {
      const root = inside.workers.get('probe[root]');
      if (id !== 'probe[root]' && root !== undefined && ['pending', 'running', 'retrying'].includes(root.state)) whileActive++;
      return mayStart(id);
    };
    await engine.setGraph(graph(lines.join('\n') + '\n'));
    // What the swap looked at while starting the root is not a wake; from here on the root only retries.
    whileActive = 0;
    await settled();
    assert.equal(world.of('root', 'fail').length, 2);
    assert.equal(whileActive, 0, 'dependents were woken while their dependency went from running to retrying and back');
    assert.equal(engine.summary().converged, 11);
    await engine.stop();
  });

  test('a notify to a dependent that has no worker yet still makes its first run a refresh', async () => {
    const { world, engine, graph, settled } = setup();
    world.actual.set('slow', 'ok');
    world.actual.set('dst', 'ok');
    await engine.setGraph(
      graph(`
resources:
  - { kind: probe, name: slow, ms: 300 }
  - { kind: probe, name: src, notify: [probe:dst] }
  - { kind: probe, name: dst, require: [probe:slow] }
`),
    );
    await settled();
    const checks = world.of('dst', 'check');
    assert.equal(checks.length, 1);
    assert.equal(checks[0]?.refresh, true, 'src changed and notifies dst: its run must be a refresh');
    assert.ok((checks[0]?.t ?? 0) >= (world.of('slow', 'done')[0]?.t ?? Infinity), 'dst ran before its dependency converged');
    await engine.stop();
  });

  test('no worker is started while a swap stops the ones it replaces: a removed vertex never runs its old definition', async () => {
    const world = new ProbeWorld();
    const slowClose = defineKind({
      kind: 'slowclose',
      description: 'test: takes 300 ms to close',
      schema: z.strictObject({ v: z.number().default(0) }),
      create: () => ({
        checkApply: () => Promise.resolve({ converged: true, changes: [] }),
        close: () => new Promise<void>((resolve) => setTimeout(resolve, 300)),
      }),
    });
    const { engine, graph, settled } = harness([probeKind(world), slowClose]);
    await engine.setGraph(
      graph(`
resources:
  - { kind: probe, name: a, ms: 100 }
  - { kind: probe, name: b, require: [probe:a] }
  - { kind: slowclose, name: x }
`),
    );
    // b waits for a (running); x is redefined, and stopping it takes longer than a's check: a converges meanwhile.
    await engine.setGraph(graph(`resources:\n  - { kind: probe, name: a, ms: 100 }\n  - { kind: slowclose, name: x, v: 1 }\n`));
    await settled();
    assert.equal(world.of('a', 'done').length, 1);
    assert.equal(world.of('b', 'check').length, 0, 'b, removed by the swap, ran when a converged during it');
    assert.deepEqual(
      engine.status().map((s) => s.id),
      ['probe[a]', 'slowclose[x]'],
    );
    await engine.stop();
  });

  test('a vertex that changes state again and again queues its dependents to wake at most twice', async () => {
    const { engine, graph, settled } = setup();
    const n = 1000;
    const lines = ['resources:', '  - { kind: probe, name: root }'];
    for (let i = 0; i < n; i++) lines.push(`  - { kind: probe, name: d${i}, require: [probe:root] }`);
    await engine.setGraph(graph(lines.join('\n') + '\n'));
    await settled(30_000);
    // Inside view: the root reporting state changes faster than its dependents can be woken (a fast poll).
    const inside = engine as unknown as { workers: Map<string, Worker>; toWake: unknown[]; stateChanged(w: Worker, prev: string): void };
    const root = inside.workers.get('probe[root]');
    assert.ok(root !== undefined);
    for (let i = 0; i < 100; i++) inside.stateChanged(root, i % 2 === 0 ? 'running' : 'converged');
    assert.ok(inside.toWake.length <= 2, `${inside.toWake.length} lists of dependents queued`);
    await until(() => inside.toWake.length === 0, 5000, 'the queue drained');
    assert.equal(engine.summary().converged, n + 1);
    await engine.stop();
  });
});

/** How many AbortControllers `body` makes (the engine and the file kind should make none unless a signal is asked for). */
async function countAbortControllers(body: () => Promise<void>): Promise<number> {
  const Real = globalThis.AbortController;
  let made = 0;
  globalThis.AbortController = class extends Real {
    constructor() {
      super();
      made++;
    }
  };
  try {
    await body();
  } finally {
    globalThis.AbortController = Real;
  }
  return made;
}
