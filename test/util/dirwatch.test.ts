import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { subscribePath, watchPath, watchedDirectoryCount } from '../../src/util/dirwatch.js';

/** Resolves with the reason of the next call of the returned callback. */
function recorder(): { cb: (reason: string) => void; next: () => Promise<string>; count: () => number } {
  let waiting: ((r: string) => void) | undefined;
  let n = 0;
  return {
    cb: (reason) => {
      n++;
      waiting?.(reason);
      waiting = undefined;
    },
    next: () => new Promise((resolve) => (waiting = resolve)),
    count: () => n,
  };
}

test('subscribers of one path share its directory watch, each is told, and leaving one keeps the others', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dirwatch-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'f');
  const before = watchedDirectoryCount();
  const subs = [recorder(), recorder(), recorder()];
  const acs = subs.map(() => new AbortController());
  for (const [i, s] of subs.entries()) await watchPath(file, s.cb, acs[i]!.signal);
  assert.equal(watchedDirectoryCount(), before + 1);

  let seen = Promise.all(subs.map((s) => s.next()));
  writeFileSync(file, 'a');
  for (const reason of await seen) assert.match(reason, /\/f$/);

  // The middle one leaves, then the first: the last is still told (a set of three, two, then one alone).
  acs[1]!.abort();
  const quiet = subs[1]!.count();
  seen = Promise.all([subs[0]!.next(), subs[2]!.next()]);
  writeFileSync(file, 'b');
  await seen;
  acs[0]!.abort();
  const last = subs[2]!.next();
  writeFileSync(file, 'c');
  assert.match(await last, /\/f$/);
  assert.equal(subs[1]!.count(), quiet);

  // A newcomer joins the one left, and the watch goes only when both have left.
  const late = recorder();
  const lateAc = new AbortController();
  await watchPath(file, late.cb, lateAc.signal);
  seen = Promise.all([late.next(), subs[2]!.next()]);
  writeFileSync(file, 'd');
  await seen;
  acs[2]!.abort();
  assert.equal(watchedDirectoryCount(), before + 1);
  lateAc.abort();
  assert.equal(watchedDirectoryCount(), before);
});

test('a directory subscriber with children is told about its entries and its own replacement', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dirwatch-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const sub = join(dir, 'd');
  mkdirSync(sub);
  const r = recorder();
  const ac = new AbortController();
  t.after(() => ac.abort());
  await watchPath(sub, r.cb, ac.signal, { children: true });
  const before = watchedDirectoryCount();
  let next = r.next();
  writeFileSync(join(sub, 'x'), '1');
  assert.match(await next, /\/d\/x$/);
  next = r.next();
  rmSync(sub, { recursive: true });
  await next;
  ac.abort();
  assert.ok(watchedDirectoryCount() < before);
});

test('subscribePath attaches at once where the parent exists, falls back to a walk where it does not, and close() ends it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dirwatch-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const before = watchedDirectoryCount();
  // The parent exists (not watched yet) and then is watched: both attach synchronously, no stat on the thread pool
  // before a file's first check.
  const a = recorder();
  const wa = subscribePath(join(dir, 'a'), a.cb);
  t.after(() => wa.close());
  assert.equal(wa.attached, undefined);
  assert.equal(watchedDirectoryCount(), before + 1);
  const b = recorder();
  const wb = subscribePath(join(dir, 'b'), b.cb);
  t.after(() => wb.close());
  assert.equal(wb.attached, undefined);
  const both = Promise.all([a.next(), b.next()]);
  writeFileSync(join(dir, 'a'), '1');
  writeFileSync(join(dir, 'b'), '1');
  await both;
  // A missing parent: watched through the nearest existing ancestor, and moved deeper once it appears.
  const c = recorder();
  const wc = subscribePath(join(dir, 'sub', 'c'), c.cb);
  t.after(() => wc.close());
  assert.notEqual(wc.attached, undefined);
  await wc.attached;
  let next = c.next();
  mkdirSync(join(dir, 'sub'));
  await next;
  // close() is synchronous: the last subscriber of a directory closes its watch on the spot.
  wb.close();
  const quiet = b.count();
  next = a.next();
  writeFileSync(join(dir, 'b'), '2');
  writeFileSync(join(dir, 'a'), '2');
  await next;
  assert.equal(b.count(), quiet);
  wa.close();
  wc.close();
  assert.equal(watchedDirectoryCount(), before);
});
