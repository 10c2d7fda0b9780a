import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { resourceId } from '../../src/graph/ids.js';
import { fileKind } from '../../src/resources/file.js';
import type { ResourceLog } from '../../src/resources/types.js';
import { testWorld } from '../helpers/world.js';

/** Temp files of writes that a `kill -9` interrupted are removed at the next start; a live writer's are not. */

const QUIET: ResourceLog = { change: () => undefined, info: () => undefined, warn: () => undefined, debug: () => undefined };
const children: ChildProcess[] = [];
const dirs: string[] = [];
after(async () => {
  for (const c of children) c.kill('SIGKILL');
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

/**
 * A real process that creates a temp file named as the agent names them (`.<name>.bp-tmp-<its pid>-<hex>`) and
 * stays in the middle of its write; `program` is node (an agent's executable) or something else.
 */
async function writer(dir: string, name: string, hex: string, program: 'node' | 'sh'): Promise<{ child: ChildProcess; temp: string }> {
  const child =
    program === 'node'
      ? spawn(process.execPath, ['-e', `require('fs').writeFileSync(process.argv[1] + '/.${name}.bp-tmp-' + process.pid + '-${hex}', 'half'); console.log('ok'); setInterval(() => {}, 1e6)`, dir], { stdio: ['ignore', 'pipe', 'inherit'] })
      : spawn('sh', ['-c', `echo half > "$0/.${name}.bp-tmp-$$-${hex}"; echo ok; exec sleep 300`, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  await new Promise<void>((resolve) => child.stdout?.once('data', () => resolve()));
  return { child, temp: `.${name}.bp-tmp-${child.pid ?? 0}-${hex}` };
}

test('temp files of killed writers are removed at the first run; a live agent-like writer keeps its own', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-file-tmp-'));
  dirs.push(dir);
  const killed = await writer(dir, 'f', 'aaaa1111', 'node');
  killed.child.kill('SIGKILL');
  await new Promise((resolve) => killed.child.once('exit', resolve));
  const live = await writer(dir, 'f', 'bbbb2222', 'node');
  // After exec the pid is sleep's: not an agent, so the name's pid was reused by something else.
  const other = await writer(dir, 'f', 'cccc3333', 'sh');
  const sibling = await writer(dir, 'g', 'dddd4444', 'sh');
  sibling.child.kill('SIGKILL');
  const path = join(dir, 'f');
  const res = fileKind.create(resourceId('file', path), fileKind.schema.parse({ path, content: 'new\n' }), testWorld());
  const before = (await readdir(dir)).sort();

  await res.checkApply({ apply: false, refresh: false, signal: new AbortController().signal, log: QUIET });
  assert.deepEqual((await readdir(dir)).sort(), before, 'noop mode removes nothing');

  await res.checkApply({ apply: true, refresh: false, signal: new AbortController().signal, log: QUIET });
  const names = await readdir(dir);
  assert.ok(!names.includes(killed.temp), 'the killed writer’s temp file is removed');
  assert.ok(!names.includes(other.temp), 'a temp file whose pid now runs something else is removed');
  assert.ok(names.includes(live.temp), 'a live writer’s temp file is left alone');
  assert.ok(names.includes(sibling.temp), 'another file’s temp files are its own business');
  assert.equal(await readFile(path, 'utf8'), 'new\n');
});
