import { test } from 'node:test';
import assert from 'node:assert/strict';
import { getHeapSpaceStatistics } from 'node:v8';
import { collectGarbage, COMPACTED, IdleCompaction, type Collection } from '../../src/agent/idle-compaction.js';

const MiB = 1024 * 1024;

function oldSpace(): { committed: number; used: number } {
  const s = getHeapSpaceStatistics().find((x) => x.space_name === 'old_space');
  assert.ok(s !== undefined);
  return { committed: s.physical_space_size, used: s.space_used_size };
}

test('a compacting collection gives back the pages that start-up garbage left half empty', () => {
  // What a start-up leaves: many objects promoted to the old generation, most of them dead now, the survivors
  // spread over every page. A plain full collection frees the dead but keeps the pages (committed stays ~3x used).
  let all: { a: number; b: string; c: number[] }[] | undefined = [];
  const keep: { a: number; b: string; c: number[] }[] = [];
  for (let i = 0; i < 1_000_000; i++) {
    const o = { a: i, b: `x${i}`, c: [i] };
    all.push(o);
    if (i % 3 === 0) keep.push(o);
  }
  all = undefined;
  assert.equal(collectGarbage('compacting'), true);
  const after = oldSpace();
  assert.ok(after.committed < after.used * 1.3 + 8 * MiB, `old space ${after.committed / MiB} MiB committed for ${after.used / MiB} MiB used`);
  assert.equal(keep.length, 333_334);
});

interface Fakes {
  readonly compaction: IdleCompaction;
  readonly runs: () => number;
  readonly kinds: Collection[];
  readonly reports: string[];
  setUsed(mib: number): void;
  setBusy(share: number): void;
}

function fakes(opts: { canCompact?: boolean } = {}): Fakes {
  let used = 100 * MiB;
  let busy = 0;
  let runs = 0;
  const reports: string[] = [];
  const kinds: Collection[] = [];
  const compaction = new IdleCompaction({
    quietMs: 1000,
    settleMs: 500,
    collect: (kind) => {
      if (opts.canCompact === false) return false;
      kinds.push(kind);
      if (kind === 'compacting') {
        runs++;
        used = 40 * MiB;
      }
      return true;
    },
    heap: () => ({ used }),
    loopBusy: () => ({ idle: 0, active: 0, utilization: busy }),
  });
  return {
    compaction,
    runs: () => runs,
    kinds,
    reports,
    setUsed: (m) => (used = m * MiB),
    setBusy: (s) => (busy = s),
  };
}

test('IdleCompaction compacts once the engine has been settled and the loop idle for a whole quiet period', (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const f = fakes();
  f.compaction.poke((m) => f.reports.push(m));
  t.mock.timers.tick(999);
  assert.deepEqual(f.kinds, []);
  t.mock.timers.tick(1);
  // First the young generation, so that V8 has a quiet allocation rate on record when the compaction comes.
  assert.deepEqual(f.kinds, ['young']);
  t.mock.timers.tick(500);
  assert.deepEqual(f.kinds, ['young', 'compacting']);
  assert.equal(f.runs(), 1);
  assert.equal(f.reports.length, 1);
  assert.ok(f.reports[0]?.startsWith(COMPACTED), f.reports[0]);
  assert.match(f.reports[0] ?? '', /100 -> 40 MiB in use/);
  f.compaction.stop();
});

test('IdleCompaction waits while the engine keeps settling and unsettling, or the loop is busy', (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const f = fakes();
  f.compaction.poke();
  t.mock.timers.tick(500);
  f.compaction.poke(); // a repair: the quiet period starts again at the next check
  t.mock.timers.tick(500);
  assert.equal(f.runs(), 0);
  f.setBusy(0.5);
  t.mock.timers.tick(1000);
  assert.equal(f.runs(), 0);
  f.setBusy(0);
  t.mock.timers.tick(1000);
  assert.deepEqual(f.kinds, ['young']);
  // Activity between the young collection and the compaction: a whole quiet period again.
  f.compaction.poke();
  t.mock.timers.tick(500);
  assert.equal(f.runs(), 0);
  t.mock.timers.tick(1000);
  t.mock.timers.tick(500);
  assert.equal(f.runs(), 1);
  f.compaction.stop();
});

test('IdleCompaction runs again only when the heap has grown well past what the last compaction left', (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const f = fakes();
  f.compaction.poke();
  t.mock.timers.tick(1000);
  t.mock.timers.tick(500);
  assert.equal(f.runs(), 1);
  // 40 MiB left: 1.5x + 16 MiB is 76 MiB.
  f.setUsed(70);
  f.compaction.poke();
  t.mock.timers.tick(1000);
  t.mock.timers.tick(500);
  assert.equal(f.runs(), 1);
  assert.deepEqual(f.kinds, ['young', 'compacting']);
  f.setUsed(90);
  f.compaction.poke();
  t.mock.timers.tick(1000);
  t.mock.timers.tick(500);
  assert.equal(f.runs(), 2);
  f.compaction.stop();
});

test('IdleCompaction gives up for good when no gc is to be had', (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  let asked = 0;
  const compaction = new IdleCompaction({ quietMs: 1000, collect: () => (asked++, false), heap: () => ({ used: 500 * MiB }), loopBusy: () => ({ idle: 0, active: 0, utilization: 0 }) });
  compaction.poke();
  t.mock.timers.tick(1000);
  compaction.poke();
  t.mock.timers.tick(5000);
  assert.equal(asked, 1);
  assert.equal(compaction.runs, 0);
});
