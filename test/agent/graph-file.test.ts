import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { appendFile, mkdtemp, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { openWriters, QUIET_MS, QuietWatch, waitUntilWritten, type FileWriter } from '../../src/agent/graph-file.js';
import { createLogger } from '../../src/log.js';

/** The real /proc scan, counted. */
function countedScan(onScan?: (n: number) => Promise<void>): { scan: (t: { dev: number; ino: number }) => Promise<FileWriter[]>; calls: () => number } {
  let n = 0;
  return {
    scan: async (t) => {
      n++;
      await onScan?.(n);
      return openWriters(t);
    },
    calls: () => n,
  };
}

describe('a graph file is read once it is written', () => {
  let dir: string;
  const lines: string[] = [];
  const log = createLogger({ level: 'debug', write: (l) => lines.push(l) });
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bp-graph-file-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('a fresh edit: read once it has been quiet, with one /proc scan (not one before and one after the quiet)', async () => {
    const file = join(dir, 'fresh.yaml');
    await writeFile(file, 'resources: []\n');
    const written = Date.now();
    const c = countedScan();
    assert.equal(await waitUntilWritten(file, new AbortController().signal, log, c.scan), true);
    assert.ok(Date.now() - written >= QUIET_MS - 5, `read ${Date.now() - written} ms after the write`);
    assert.equal(c.calls(), 1);
  });

  test('a process holding it open for writing holds the read until it closes it, and is named', async () => {
    const file = join(dir, 'held.yaml');
    await writeFile(file, 'resources: []\n');
    await utimes(file, new Date(Date.now() - 60_000), new Date(Date.now() - 60_000));
    const child = spawn('sh', ['-c', `exec 3>>'${file}'; echo open; sleep 0.8`], { stdio: ['ignore', 'pipe', 'ignore'] });
    await new Promise<void>((res) => child.stdout.once('data', () => res()));
    const exited = new Promise<number>((res) => child.once('exit', () => res(Date.now())));
    assert.equal(await waitUntilWritten(file, new AbortController().signal, log), true);
    const done = Date.now();
    assert.ok(done >= (await exited), 'read while the writer still had it open');
    assert.ok(lines.some((l) => l.includes(`graph file ${file} is open for writing by sh (pid ${child.pid})`)), lines.join('\n'));
  });

  test('a process holding thousands of descriptors does not hold the event loop for the whole of its scan', async () => {
    // 15,000 descriptors of /dev/null: looking at each takes a few microseconds, so one stretch over all of them
    // would hold the loop for tens of milliseconds; the scan lets the loop in between every 64 of them.
    const child = spawn(process.execPath, ['-e', "const fs = require('node:fs'); for (let i = 0; i < 15000; i++) fs.openSync('/dev/null', 'r'); console.log('open'); setTimeout(() => {}, 60000);"], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((res) => child.stdout.once('data', () => res()));
      let turns = 0;
      let longest = 0;
      let last = performance.now();
      let ticking = true;
      const tick = (): void => {
        const now = performance.now();
        longest = Math.max(longest, now - last);
        last = now;
        turns++;
        if (ticking) setImmediate(tick);
      };
      setImmediate(tick);
      const target = { dev: -1, ino: -1 };
      const t0 = performance.now();
      await openWriters(target);
      const took = performance.now() - t0;
      ticking = false;
      // The child's descriptors alone are tens of milliseconds of calls; the loop ran many times meanwhile.
      assert.ok(turns > 20, `the event loop ran ${turns} times in a ${took.toFixed(0)} ms scan (longest stretch ${longest.toFixed(1)} ms)`);
    } finally {
      child.kill('SIGKILL');
    }
  });

  test('an edit made while /proc is read starts the wait over', async () => {
    const file = join(dir, 'raced.yaml');
    await writeFile(file, 'resources: []\n');
    await utimes(file, new Date(Date.now() - 60_000), new Date(Date.now() - 60_000));
    const c = countedScan(async (n) => {
      if (n === 1) await appendFile(file, '# more\n');
    });
    assert.equal(await waitUntilWritten(file, new AbortController().signal, log, c.scan), true);
    assert.equal(c.calls(), 2, 'the file changed during the first scan: it must be found quiet and scanned again');
  });

  test('a file whose mtime is in the future is read once it stays unchanged, not when the clock reaches its mtime', async () => {
    const file = join(dir, 'future.yaml');
    await writeFile(file, 'resources: []\n');
    const hourAhead = new Date(Date.now() + 3_600_000);
    await utimes(file, hourAhead, hourAhead);
    const ac = new AbortController();
    const stop = setTimeout(() => ac.abort(), 10_000);
    const t0 = Date.now();
    assert.equal(await waitUntilWritten(file, ac.signal, log), true, 'still waiting after 10 s: held until the mtime');
    clearTimeout(stop);
    assert.ok(Date.now() - t0 >= QUIET_MS - 5);

    // The removal hold uses the same rule.
    const quiet = new QuietWatch();
    assert.ok((await quiet.msUntilQuiet(file, 300)) > 0, 'just seen: not yet quiet');
    await sleep(320);
    assert.ok((await quiet.msUntilQuiet(file, 300)) <= 0, 'unchanged for 300 ms while watched: quiet');
    await appendFile(file, '# edit\n');
    await utimes(file, hourAhead, hourAhead);
    assert.ok((await quiet.msUntilQuiet(file, 300)) > 0, 'changed: the wait starts over');
  });
});
