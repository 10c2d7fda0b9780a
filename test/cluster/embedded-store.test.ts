import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { appendFile, mkdir, mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { EmbeddedStore } from '../../src/cluster/embedded-store.js';
import { Recorder, rejectsWith, storeContract, until } from './store-contract.js';

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'bp-store-'));
  dirs.push(d);
  return d;
}
after(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

storeContract('embedded', { open: async () => EmbeddedStore.open({ dir: await tempDir() }) });

const STORE_MODULE = fileURLToPath(new URL('../../src/cluster/embedded-store.ts', import.meta.url));

/**
 * A separate process that opens the store in `dir`, writes `n` keys one at a time and prints each acknowledged key.
 * Run with `node --import tsx`, so it is killed directly (no npx wrapper in between).
 */
function writerProcess(dir: string, n: number, hold = false) {
  const code = `
    const { EmbeddedStore } = await import(${JSON.stringify(STORE_MODULE)});
    const s = await EmbeddedStore.open({ dir: ${JSON.stringify(dir)}, snapshotEvery: 50 });
    process.stdout.write('open\\n');
    const lease = await s.lease(60000);
    await s.put('leased', 'x', { lease });
    for (let i = 0; i < ${n}; i++) {
      await Promise.all([s.put('k/' + i, 'v' + i), s.put('k2/' + i, 'w' + i)]);
      process.stdout.write('ack ' + i + '\\n');
    }
    process.stdout.write('done\\n');
    ${hold ? 'setInterval(() => {}, 1000);' : 'await s.close();'}
  `;
  return spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
}

describe('embedded store: durability and ownership', () => {
  test('survives kill -9 mid-write: every acknowledged write is there after reopening; leased keys are gone', async () => {
    const dir = await tempDir();
    const child = writerProcess(dir, 100_000);
    let acked = -1;
    let out = '';
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString();
      const m = /ack (\d+)\n[^\n]*$/.exec(out);
      if (m?.[1] !== undefined) acked = Number(m[1]);
      if (out.length > 10_000) out = out.slice(-1000);
    });
    // Kill it while it writes, after enough writes to have taken a few snapshots (every 50 records).
    await until('the writer to acknowledge 300 writes', () => acked >= 300, 30_000);
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await exited;
    const lastAcked = acked;

    const s = await EmbeddedStore.open({ dir });
    try {
      for (let i = 0; i <= lastAcked; i++) {
        const kv = await s.get(`k/${i}`);
        assert.equal(kv?.value, `v${i}`, `k/${i} was acknowledged before the kill`);
        assert.equal((await s.get(`k2/${i}`))?.value, `w${i}`);
      }
      assert.equal(await s.get('leased'), undefined, 'a lease of the dead process has expired');
      // Writes after recovery work and land at the next revision.
      const { revision } = await s.list('');
      assert.equal((await s.put('after', 'x')).revision, revision + 1);
      const snap = await stat(join(dir, 'snapshot.json'));
      assert.ok(snap.size > 0, 'snapshots were taken');
    } finally {
      await s.close();
    }
  });

  test('a torn last log line is dropped; everything before it survives, and later writes append cleanly', async () => {
    const dir = await tempDir();
    let s = await EmbeddedStore.open({ dir });
    await s.put('a', '1');
    await s.put('b', '2');
    const rev = (await s.put('c', '3')).revision;
    await s.close();
    const log = join(dir, 'store.log');
    const size = (await stat(log)).size;
    // Cut the last record in the middle, as a crash during its append would.
    await truncate(log, size - 7);
    s = await EmbeddedStore.open({ dir });
    assert.equal((await s.get('a'))?.value, '1');
    assert.equal((await s.get('b'))?.value, '2');
    assert.equal(await s.get('c'), undefined);
    assert.equal((await s.list('')).revision, rev - 1);
    await s.put('d', '4');
    await s.close();

    // A torn line ending without a newline but with garbage that parses badly, at the very end: also dropped.
    await appendFile(log, '{"r":99,"o":[["p","zz"');
    s = await EmbeddedStore.open({ dir });
    assert.deepEqual((await s.list('')).kvs.map((k) => `${k.key}=${k.value}`), ['a=1', 'b=2', 'd=4']);
    await s.close();
    const text = await readFile(log, 'utf8');
    assert.ok(text.endsWith('\n') && !text.includes('"zz"'), 'the torn tail was cut off on open');

    // Damage in the middle is not a torn append: refuse instead of losing what follows.
    const lines = text.split('\n');
    lines[0] = '{"r":2,"o":[[';
    await writeFile(log, lines.join('\n'));
    await rejectsWith(EmbeddedStore.open({ dir }), 'corrupt', /line 1 is damaged/);
  });

  test('one process per directory: a second open is refused while the first lives, even across processes', async () => {
    const dir = await tempDir();
    const s = await EmbeddedStore.open({ dir });
    await rejectsWith(EmbeddedStore.open({ dir }), 'locked', new RegExp(`pid ${process.pid}`));
    await s.close();
    await (await EmbeddedStore.open({ dir })).close();

    const dir2 = await tempDir();
    const child = writerProcess(dir2, 1, true);
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    await until('the other process to open the store', () => out.includes('done'), 30_000);
    await rejectsWith(EmbeddedStore.open({ dir: dir2 }), 'locked', new RegExp(`pid ${child.pid}`));
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await exited;
    // The kernel dropped the lock with the process: no stale lock to break.
    const s2 = await EmbeddedStore.open({ dir: dir2 });
    assert.equal((await s2.get('k/0'))?.value, 'v0');
    await s2.close();
  });

  test('snapshots and reopen keep revisions, createRevisions and the watch history contract', async () => {
    const dir = await tempDir();
    let s = await EmbeddedStore.open({ dir, snapshotEvery: 10, historyEvents: 5 });
    const first = (await s.put('x', '0')).revision;
    for (let i = 1; i <= 25; i++) await s.put('x', String(i));
    await s.put('y', 'y');
    const before = await s.get('x');
    const rev = (await s.list('')).revision;
    // The history ring keeps the last 5 events: a watch from further back gets a resync.
    const rec = new Recorder();
    const ac = new AbortController();
    await s.watch('', first, rec.onEvent, ac.signal);
    await until('resync', () => rec.batches.length > 0);
    assert.equal(rec.batches[0]?.type, 'resync');
    const recent = new Recorder();
    await s.watch('', rev - 2, recent.onEvent, ac.signal);
    await until('replay', () => recent.events().length === 3);
    assert.deepEqual(recent.summary(), ['put x=24', 'put x=25', 'put y=y']);
    ac.abort();
    await s.close();
    assert.ok((await stat(join(dir, 'store.log'))).size < 1000, 'the log was emptied by a snapshot');

    s = await EmbeddedStore.open({ dir });
    assert.deepEqual(await s.get('x'), before);
    assert.equal(before?.createRevision, first);
    assert.equal((await s.list('')).revision, rev);
    await s.close();
  });

  test('a full disk rejects the write with a clear error and leaves the store consistent (real ENOSPC on a tiny tmpfs)', async (t) => {
    const mnt = await tempDir();
    const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', mnt], { encoding: 'utf8' });
    if (mounted.status !== 0) {
      t.skip(`cannot mount a tmpfs here (${mounted.stderr.trim() || 'not root'})`);
      return;
    }
    try {
      const dir = join(mnt, 'store');
      await mkdir(dir);
      const s = await EmbeddedStore.open({ dir });
      const rec = new Recorder();
      const ac = new AbortController();
      await s.watch('', 0, rec.onEvent, ac.signal);
      await s.put('before', 'ok');
      // Fill the filesystem, leaving a few KiB, so the next large append fails part-way (a short write, then ENOSPC).
      const filler = join(mnt, 'filler');
      await writeFile(filler, Buffer.alloc(150 * 1024));
      const big = 'z'.repeat(120 * 1024);
      const logSize = (await stat(join(dir, 'store.log'))).size;
      const err = await rejectsWith(s.put('big', big), 'disk-full', /no space left/);
      assert.ok(err.retryable);
      assert.match(err.hint ?? '', /free disk space/);
      assert.equal(await s.get('big'), undefined, 'the failed write is not visible');
      assert.equal((await stat(join(dir, 'store.log'))).size, logSize, 'the partial append was cut off');
      // Small writes still fit and work; the failed one never reached watchers.
      await s.put('small', 'ok');
      await rm(filler);
      await s.put('big', big);
      await until('events', () => rec.events().length === 3);
      assert.deepEqual(rec.events().map((e) => (e.type === 'put' ? e.kv.key : e.key)), ['before', 'small', 'big']);
      assert.ok((await s.health()).ok);
      ac.abort();
      await s.close();
      const again = await EmbeddedStore.open({ dir });
      assert.deepEqual((await again.list('')).kvs.map((k) => k.key), ['before', 'big', 'small']);
      await again.close();
    } finally {
      spawnSync('umount', [mnt]);
    }
  });
});
