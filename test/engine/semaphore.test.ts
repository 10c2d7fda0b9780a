import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Semaphore } from '../../src/util/semaphore.js';

test('waiters get slots in FIFO order; one that gives up is skipped, not served', async () => {
  const s = new Semaphore(1);
  await s.acquire();
  const order: string[] = [];
  const ac = new AbortController();
  const a = s.acquire().then(() => order.push('a'));
  const b = s.acquire(ac.signal).then(
    () => order.push('b'),
    (e: unknown) => order.push(`b gave up: ${(e as Error).message}`),
  );
  const c = s.acquire().then(() => order.push('c'));
  ac.abort(new Error('stopped'));
  await b;
  s.release();
  await a;
  s.release();
  await c;
  assert.deepEqual(order, ['b gave up: stopped', 'a', 'c']);
  s.release();
  // All slots free again: an acquire is granted at once.
  await s.acquire();
});

/** Time to hand a slot to each of n waiters in turn. */
async function drain(n: number): Promise<number> {
  const s = new Semaphore(1);
  await s.acquire();
  const all: Promise<void>[] = [];
  for (let i = 0; i < n; i++) all.push(s.acquire().then(() => s.release()));
  const t0 = performance.now();
  s.release();
  await Promise.all(all);
  return performance.now() - t0;
}

test('handing out slots stays linear in the number of waiters (100,000 file checks queue for 64 slots)', async () => {
  await drain(10_000); // warm up
  // The best of three each: load from the tests beside this one (a collection, another process) only adds time, and
  // a single 100,000 drain once took 1 s of a loaded run where it takes ~0.3 s.
  const best = async (n: number): Promise<number> => Math.min(await drain(n), await drain(n), await drain(n));
  const small = await best(10_000);
  const big = await best(100_000);
  // Linear: ~10x. A queue that copies itself on every release (Array.shift on a big array) took ~60x here, and
  // at 100,000 resources a cold run became quadratic.
  assert.ok(big < small * 25 + 100, `10,000 waiters: ${small.toFixed(0)} ms, 100,000: ${big.toFixed(0)} ms`);
});
