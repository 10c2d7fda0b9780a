import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

/**
 * Log lines are written to stderr once per event-loop turn (src/util/stderr.ts): many lines, one write; none lost when
 * the process exits right after logging; none after an error report that came later.
 */
const module = fileURLToPath(new URL('../../src/util/stderr.ts', import.meta.url));
const common = fileURLToPath(new URL('../../src/cli/common.ts', import.meta.url));

function child(code: string): { stderr: string; writes: number; streamWrites: number } {
  const script = `
    import fs, { writeSync } from 'node:fs';
    import { syncBuiltinESMExports } from 'node:module';
    // Writes to stderr either way: straight to fd 2 (the batch) or through the stream (the error report).
    let writes = 0;
    let streamWrites = 0;
    const realSync = fs.writeSync;
    fs.writeSync = (fd, ...rest) => { if (fd === 2) writes++; return realSync(fd, ...rest); };
    syncBuiltinESMExports();
    const real = process.stderr.write.bind(process.stderr);
    process.stderr.write = (chunk, ...rest) => { writes++; streamWrites++; return real(chunk, ...rest); };
    const { writeStderr } = await import(${JSON.stringify(module)});
    // The module flushes on exit once something was written: this count runs after that flush.
    writeStderr('');
    process.on('exit', () => writeSync(1, JSON.stringify({ writes, streamWrites })));
    const { reportError } = await import(${JSON.stringify(common)});
    ${code}
  `;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const counts = JSON.parse(r.stdout) as { writes: number; streamWrites: number };
  return { stderr: r.stderr, ...counts };
}

test('lines written in one turn go out in one write, and all of them are there at exit', () => {
  const r = child(`for (let i = 0; i < 1000; i++) writeStderr('line ' + i + '\\n'); process.exit(0);`);
  assert.equal(r.stderr.split('\n').filter(Boolean).length, 1000);
  assert.equal(r.writes, 1);
  const turns = child(`writeStderr('a\\n'); setTimeout(() => { writeStderr('b\\n'); writeStderr('c\\n'); }, 20);`);
  assert.equal(turns.stderr, 'a\nb\nc\n');
  assert.equal(turns.writes, 2);
  // Straight to fd 2: process.stderr's stream (Node's stream modules, net for a pipe like this one) is not needed.
  assert.equal(r.streamWrites + turns.streamWrites, 0);
});

test('an error report comes after the lines logged before it', () => {
  const r = child(`writeStderr('before\\n'); reportError(new Error('boom')); writeStderr('after\\n');`);
  assert.match(r.stderr, /^before\nerror: boom\nafter\n$/);
});
