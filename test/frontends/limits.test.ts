import { execFileSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { ValidationErrors } from '../../src/errors.js';
import { checkExpansion, READ_CHUNK, readGraphText } from '../../src/frontends/limits.js';
import { loadGraphFile } from '../../src/frontends/load.js';
import { startCli } from '../helpers/cli.js';
import { withTempDir } from '../helpers/engine.js';
import { registry } from '../helpers/graph.js';

/** The error text a graph file fails with (and that it fails). */
async function failure(file: string): Promise<string> {
  try {
    await loadGraphFile(file, registry);
  } catch (err) {
    assert.ok(err instanceof ValidationErrors, String(err));
    return err.format();
  }
  assert.fail('the graph loaded');
}

describe('bounded under hostile input', () => {
  test('an alias bomb in template vars is refused at once, at its line', async () => {
    await withTempDir(async (dir) => {
      let text = 'anchors:\n  - &a0 [x, x, x, x, x, x, x, x, x, x]\n';
      for (let i = 1; i < 9; i++) text += `  - &a${i} [${Array(10).fill(`*a${i - 1}`).join(', ')}]\n`;
      text += `resources:\n  - kind: template\n    name: ${dir}/out\n    template: "{{ vars.x }}"\n    vars:\n      x: *a8\n`;
      const file = join(dir, 'bomb.yaml');
      await writeFile(file, text);
      const t0 = performance.now();
      const msg = await failure(file);
      assert.match(msg, /bomb\.yaml:\d+:\d+: aliases expand this value to [\d,]+ values, more than the limit/);
      assert.ok(performance.now() - t0 < 5000, `took ${performance.now() - t0} ms`);
    });
  });

  test('many scalars without an alias are not an alias bomb; what an alias copies still counts', () => {
    const where = () => ({ file: 'x', line: 0, col: 0 });
    // 1,100,000 written values, none copied: once refused as "aliases expand this value to 1,100,002 values".
    checkExpansion({ resources: Array.from({ length: 1_100_000 }, (_, i) => i) }, where);
    // One copy of 700,000 values is within the limit, two are not.
    const shared = Array.from({ length: 700_000 }, (_, i) => i);
    checkExpansion({ a: shared, b: shared }, where);
    assert.throws(() => checkExpansion({ a: shared, b: shared, c: shared }, where), /aliases expand this value to 2,100,004 values/);
  });

  test('too deep, too big and not UTF-8 are refused with what to do', async () => {
    await withTempDir(async (dir) => {
      const deep = join(dir, 'deep.yaml');
      await writeFile(deep, `x: ${'['.repeat(3000)}${']'.repeat(3000)}\n`);
      assert.match(await failure(deep), /deep\.yaml:1:\d+: nested more than 100 levels deep/);
      const latin1 = join(dir, 'latin1.yaml');
      await writeFile(latin1, Buffer.from('resources:\n  - kind: file\n    name: /tmp/caf\xe9\n', 'latin1'));
      assert.match(await failure(latin1), /latin1\.yaml:3:19: the file is not UTF-8: invalid byte sequence \\xe9/);
      const big = join(dir, 'big.yaml');
      await writeFile(big, `# ${'x'.repeat(2000)}\nresources: []\n`);
      process.env['BACKPLANE_MAX_GRAPH_BYTES'] = '1000';
      try {
        assert.match(await failure(big), /graph file is 0\.0 MiB \(2017 bytes\), more than the limit[\s\S]*BACKPLANE_MAX_GRAPH_BYTES/);
      } finally {
        delete process.env['BACKPLANE_MAX_GRAPH_BYTES'];
      }
    });
  });

  test('a FIFO at the graph path is refused at once, never waited on; a byte order mark is dropped, small file or big', async () => {
    await withTempDir(async (dir) => {
      const fifo = join(dir, 'g.yaml');
      execFileSync('mkfifo', [fifo]);
      // Opened without O_NONBLOCK, the open itself would wait for a writer that never comes.
      const t0 = performance.now();
      await assert.rejects(readGraphText(fifo), /cannot read graph file .*g\.yaml: not a regular file/);
      assert.ok(performance.now() - t0 < 5000);
      for (const size of [100, 300 * 1024]) {
        const file = join(dir, `bom-${size}.yaml`);
        const body = `resources: []\n# ${'x'.repeat(size)}\n`;
        await writeFile(file, `\ufeff${body}`);
        assert.equal(await readGraphText(file), body, `${size} bytes`);
      }
    });
  });

  test('UTF-8 is checked piece by piece as the file is read: a character cut between two reads is whole, a bad byte is found where it is', async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, 'g.yaml');
      const head = Buffer.from('resources: []\n# ');
      for (const ch of ['é', '€', '😀']) {
        const bytes = Buffer.from(ch);
        // The character starts 3, 2 and 1 bytes before each read's end, and right at it.
        for (let cut = 0; cut <= bytes.length; cut++) {
          const pad = Buffer.alloc(READ_CHUNK - head.length - cut, 0x78);
          const text = Buffer.concat([head, pad, bytes, Buffer.from(' tail\n'), pad, bytes, Buffer.from('\n')]);
          await writeFile(file, text);
          assert.equal(await readGraphText(file), text.toString('utf8'), `${ch} cut ${cut}`);
          // The same character without its last byte, across the cut: refused at its column.
          const broken = Buffer.concat([head, pad, bytes.subarray(0, bytes.length - 1), Buffer.from(' tail\n')]);
          await writeFile(file, broken);
          const col = 3 + pad.length;
          assert.match(await failure(file), new RegExp(`g\\.yaml:2:${col}: the file is not UTF-8: invalid byte sequence`), `${ch} cut ${cut}`);
        }
      }
      // A continuation byte with nothing before it, first in the second read.
      const lone = Buffer.concat([head, Buffer.alloc(READ_CHUNK - head.length, 0x78), Buffer.from([0x80]), Buffer.from('\n')]);
      await writeFile(file, lone);
      assert.match(await failure(file), new RegExp(`g\\.yaml:2:${READ_CHUNK - head.length + 3}: the file is not UTF-8: invalid byte sequence \\\\x80`));
    });
  });

  test('strings that cannot be a path are refused at validation', async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, 'paths.yaml');
      await writeFile(
        file,
        `resources:\n  - kind: file\n    name: "/tmp/a\\0b"\n  - kind: file\n    name: "/tmp/\\uD800"\n  - kind: file\n    name: /tmp/${'n'.repeat(256)}\n  - kind: file\n    name: ${'/abc'.repeat(1100)}\n  - kind: file\n    name: /tmp/ok\n    type: symlink\n    target: "a\\0"\n`,
      );
      const msg = await failure(file);
      assert.match(msg, /paths\.yaml:2:5: .*must not contain a NUL/);
      assert.match(msg, /paths\.yaml:4:5: .*lone UTF-16 surrogate/);
      assert.match(msg, /paths\.yaml:6:5: .*component of 256 bytes.*NAME_MAX/);
      assert.match(msg, /paths\.yaml:8:5: .*4400 bytes long.*PATH_MAX/);
      assert.match(msg, /paths\.yaml:13:5: .*"target": must not contain a NUL/);
    });
  });

  test('a TypeScript graph that throws fails at its own line, one that loops is stopped by its time limit', async () => {
    await withTempDir(async (dir) => {
      const throwing = join(dir, 'throw.mts');
      await writeFile(throwing, `const n: number = 1;\nexport default () => {\n  if (n === 1) throw new Error('no database');\n  return [];\n};\n`);
      assert.match(await failure(throwing), /throw\.mts:3:\d+: the graph function threw: no database/);
      const loop = join(dir, 'loop.mts');
      await writeFile(loop, `export default () => { for (;;) {} };\n`);
      process.env['BACKPLANE_MODULE_TIMEOUT_MS'] = '1500';
      try {
        assert.match(await failure(loop), /loop\.mts: the graph module did not return within 1\.5s/);
      } finally {
        delete process.env['BACKPLANE_MODULE_TIMEOUT_MS'];
      }
    });
  });

  test('a TypeScript graph that allocates without end is stopped by its memory limit, and the agent lives on', async () => {
    await withTempDir(async (dir) => {
      const hog = join(dir, 'hog.mts');
      await writeFile(hog, `export default () => { const keep: string[][] = []; for (;;) keep.push(new Array(100000).fill('x')); };\n`);
      process.env['BACKPLANE_MODULE_MEMORY_MB'] = '64';
      try {
        assert.match(await failure(hog), /hog\.mts: the graph module used more than 64 MB of memory/);
      } finally {
        delete process.env['BACKPLANE_MODULE_MEMORY_MB'];
      }
      // The limit ended the worker, not this process: a sane graph still loads here.
      const ok = join(dir, 'ok.mts');
      await writeFile(ok, `export default () => [];\n`);
      const g = await loadGraphFile(ok, registry);
      assert.equal(g.vertices.size, 0);
    });
  });

  test('SIGTERM stops validate and run while a TypeScript graph is still looping', async () => {
    await withTempDir(async (dir) => {
      const loop = join(dir, 'loop.mts');
      await writeFile(loop, `export default () => { for (;;) {} };\n`);
      for (const args of [['validate', '-f', loop], ['run', '-f', loop, '--state-dir', join(dir, 'state')]]) {
        const cli = startCli(args, { timeoutMs: 30_000 });
        // Give it time to be inside the module's loop (tsx's cold start is slow on a loaded machine, and a signal
        // before the CLI installs its handlers would kill it silently). The loop never ends, so waiting longer
        // proves the same.
        await new Promise((r) => setTimeout(r, 3000));
        const t0 = performance.now();
        cli.proc.kill('SIGTERM');
        const res = await cli.exited;
        assert.ok(performance.now() - t0 < 3000, `${args[0]} took ${performance.now() - t0} ms after SIGTERM; ${res.stderr}`);
        assert.match(res.stderr + res.stdout, args[0] === 'validate' ? /SIGTERM: validation stopped/ : /stopped while loading the graph; nothing was applied/);
      }
    });
  });
});
