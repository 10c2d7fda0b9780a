import assert from 'node:assert/strict';
import { createHook } from 'node:async_hooks';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { resourceId } from '../../src/graph/ids.js';
import { fileKind } from '../../src/resources/file.js';
import type { CheckResult, Resource, ResourceLog } from '../../src/resources/types.js';
import { testWorld } from '../helpers/world.js';

/**
 * The converged check of a file on a local filesystem runs on the main thread (four system calls), not through the
 * thread pool: what made a 1,000-file check pass slower than CFEngine's. Counted here are the thread-pool requests
 * (and file handles) a check creates; everything that is not plainly in place must still take the full path.
 */

const log: ResourceLog = { change: () => undefined, info: () => undefined, warn: () => undefined, debug: () => undefined };
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

function make(params: Record<string, unknown>): Resource {
  return fileKind.create(resourceId('file', String(params['path'])), fileKind.schema.parse(params), testWorld());
}

/** Runs one check and counts the asynchronous filesystem requests it made. */
async function counted(res: Resource, apply = true): Promise<{ result: CheckResult; fsRequests: number }> {
  let fsRequests = 0;
  const hook = createHook({
    init(_id, type) {
      if (type === 'FSREQCALLBACK' || type === 'FSREQPROMISE' || type === 'FILEHANDLE' || type === 'STATWATCHER') fsRequests++;
    },
  });
  hook.enable();
  try {
    const result = await res.checkApply({ apply, refresh: false, signal: new AbortController().signal, log });
    return { result, fsRequests };
  } finally {
    hook.disable();
  }
}

test('a converged file or directory is checked without the thread pool; drift still takes the full path', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-file-fast-'));
  dirs.push(dir);
  const path = join(dir, 'f');
  const file = make({ path, content: 'hello\n', mode: '0640' });
  const sub = make({ path: join(dir, 'sub'), type: 'directory', mode: '0750' });

  // The first runs create them (and learn that the directory is trusted and local).
  assert.equal((await counted(file)).result.converged, false);
  assert.equal((await counted(sub)).result.converged, false);

  // Creating a directory makes the trusted-directory cache start over (forgetTrustedDirs): one look to refill it.
  for (const res of [file, sub]) assert.equal((await counted(res)).result.converged, true);
  for (const res of [file, sub]) {
    const { result, fsRequests } = await counted(res);
    assert.equal(result.converged, true);
    assert.equal(fsRequests, 0, 'a converged check went through the thread pool');
  }

  // Same size, other bytes: the fast check must not call that converged, and the full path repairs it.
  await writeFile(path, 'HELLO\n');
  const drifted = await counted(file);
  assert.deepEqual(drifted.result.changes, ['content changed']);
  assert.ok(drifted.fsRequests > 0);
  assert.equal(await readFile(path, 'utf8'), 'hello\n');

  // Mode drift on the file and on the directory.
  await chmod(path, 0o644);
  assert.deepEqual((await counted(file)).result.changes, ['mode 0644 -> 0640']);
  await chmod(join(dir, 'sub'), 0o755);
  assert.deepEqual((await counted(sub)).result.changes, ['mode 0755 -> 0750']);

  // Noop mode: the same answer, nothing changed.
  await writeFile(path, 'hello, longer\n');
  const noop = await counted(file, false);
  assert.equal(noop.result.converged, false);
  assert.equal(await readFile(path, 'utf8'), 'hello, longer\n');
});

test('what the fast check cannot judge takes the full path: a source, a purged directory, a named owner', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-file-fast-'));
  dirs.push(dir);
  const src = join(dir, 'src');
  await writeFile(src, 'copied\n');
  const cases = [
    make({ path: join(dir, 'copy'), source: src }),
    make({ path: join(dir, 'purged'), type: 'directory', purge: true }),
    make({ path: join(dir, 'owned'), content: 'x', owner: 'root' }),
  ];
  for (const res of cases) {
    assert.equal((await counted(res)).result.converged, false);
    const again = await counted(res);
    assert.equal(again.result.converged, true);
    assert.ok(again.fsRequests > 0, 'a check the fast path cannot judge was answered by it');
  }
});
