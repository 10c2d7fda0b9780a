import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { withTempDir } from '../helpers/engine.js';
import { BIN, ensureBuilt } from '../helpers/cli.js';
import { performance as shim } from '../../src/util/perf-shim.js';

/**
 * What a one-shot run of a small graph loads of Node itself (#13): the built-in modules it has no use for are loaded
 * on first use (scripts/build.mjs lazyBuiltins), and the global `performance` is a plain monotonic clock in the CLI
 * bundle (src/util/perf-shim.ts) — each of these was milliseconds of every start.
 */
const LAZY = ['child_process', 'crypto', 'worker_threads', 'perf_hooks', 'readline', 'dgram', 'net'];

before(() => ensureBuilt());

/** The built-in modules the CLI loaded, as Node lists them at exit. */
function builtinsLoaded(args: readonly string[], stderr: 'pipe' | 'ignore' = 'pipe'): string[] {
  const probe = "process.on('exit', () => require('node:fs').writeSync(3, process.moduleLoadList.join('\\n')))";
  const r = spawnSync(process.execPath, ['-e', `${probe}; require(${JSON.stringify(BIN)})`, BIN, ...args], {
    encoding: 'utf8',
    // stdout to /dev/null, as from cron; stderr a pipe, as to journald: neither needs a stream (nor net) for a run.
    stdio: ['ignore', 'ignore', stderr, 'pipe'],
    env: { ...process.env, NODE_OPTIONS: '' },
  });
  assert.equal(r.status, 0, r.stderr);
  const listed = r.output[3];
  return (typeof listed === 'string' ? listed : '').split('\n').filter((l) => l.startsWith('NativeModule ')).map((l) => l.slice('NativeModule '.length));
}

test('a one-shot run of a small converged graph of files loads none of the built-ins it does not use', async () => {
  await withTempDir(async (dir) => {
    const graph = join(dir, 'g.yaml');
    await writeFile(graph, `resources:\n  - { kind: file, name: ${join(dir, 'f')}, content: "x" }\n`);
    // Already in place: a write would need crypto for its temp file's random name.
    await writeFile(join(dir, 'f'), 'x');
    const loaded = builtinsLoaded(['run', '--file', graph, '--converged-timeout', '0', '--state-dir', join(dir, 'state')]);
    assert.ok(loaded.includes('fs/promises'), `the probe saw no modules: ${loaded.join(' ')}`);
    assert.deepEqual(LAZY.filter((m) => loaded.includes(m)), []);
  });
});

test("a run with stderr in /dev/null (cron's 2>/dev/null) builds no stderr stream to ask whether it is a terminal", async () => {
  await withTempDir(async (dir) => {
    const graph = join(dir, 'g.yaml');
    await writeFile(graph, 'resources: []\n');
    const loaded = builtinsLoaded(['run', '--file', graph, '--converged-timeout', '0', '--state-dir', join(dir, 'state')], 'ignore');
    assert.ok(loaded.includes('vm'), `the probe saw no modules: ${loaded.join(' ')}`);
    // /dev/null is a character device, as a terminal is: process.stderr would be a stream over it (a tty's: tty, net).
    assert.deepEqual(['internal/fs/sync_write_stream', 'tty', 'net'].filter((m) => loaded.includes(m)), []);
  });
});

test("a run of an empty graph loads neither node:v8 (and with it Node's ~20 stream modules) nor node:fs/promises", async () => {
  await withTempDir(async (dir) => {
    const graph = join(dir, 'g.yaml');
    await writeFile(graph, 'resources: []\n');
    const loaded = builtinsLoaded(['run', '--file', graph, '--converged-timeout', '0', '--state-dir', join(dir, 'state')]);
    assert.ok(loaded.includes('vm'), `the probe saw no modules: ${loaded.join(' ')}`);
    // The launcher sets V8's checksum flag through the binding node:v8 uses (src/cli/launcher.ts): node:v8 loads
    // internal/heap_utils and the streams at its top. The graph is read with node:fs's callbacks (frontends/limits.ts):
    // node:fs/promises loads readline, the watchers and fs/dir. os and timers/promises are stand-ins until used.
    const unused = ['v8', 'internal/heap_utils', 'stream', 'internal/streams/readable', 'fs/promises', 'internal/fs/promises', 'internal/readline/interface', 'timers/promises'];
    assert.deepEqual(unused.filter((m) => loaded.includes(m)), []);
  });
});

test('a run that needs one of them still gets the real module (exec: child_process)', async () => {
  await withTempDir(async (dir) => {
    const graph = join(dir, 'g.yaml');
    await writeFile(graph, `resources:\n  - { kind: exec, name: touch, cmd: [touch, ${join(dir, 'made')}], creates: ${join(dir, 'made')} }\n`);
    const loaded = builtinsLoaded(['run', '--file', graph, '--converged-timeout', '0', '--state-dir', join(dir, 'state')]);
    assert.ok(loaded.includes('child_process'));
  });
});

test('a run that connects still gets the real net (tcp against a listener here)', async () => {
  // The listener is a child of its own: builtinsLoaded blocks this process's event loop while the CLI runs.
  const server = spawn(process.execPath, ['-e', "const s = require('node:net').createServer((c) => c.end('hello\\n')); s.listen(0, '127.0.0.1', () => console.log(s.address().port));"], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    const [line] = (await once(server.stdout, 'data')) as [Buffer];
    const port = Number(line.toString().trim());
    await withTempDir(async (dir) => {
      const graph = join(dir, 'g.yaml');
      await writeFile(graph, `resources:\n  - { kind: tcp, name: up, address: "127.0.0.1:${port}", expect: hello }\n`);
      const loaded = builtinsLoaded(['run', '--file', graph, '--converged-timeout', '0', '--state-dir', join(dir, 'state')]);
      assert.ok(loaded.includes('net'), loaded.join(' '));
    });
  } finally {
    server.kill();
  }
});

test("the bundle's performance.now() is a monotonic clock in milliseconds; the rest is Node's", async () => {
  const a = shim.now();
  await sleep(30);
  const b = shim.now();
  assert.ok(b - a >= 25 && b - a < 5000, `${b - a} ms for a 30 ms sleep`);
  const elu = shim.eventLoopUtilization();
  assert.equal(typeof elu.utilization, 'number');
});
