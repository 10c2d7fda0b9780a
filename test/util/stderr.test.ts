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

function child(code: string): { stderr: string; writes: number } {
  const script = `
    import { writeSync } from 'node:fs';
    let writes = 0;
    const real = process.stderr.write.bind(process.stderr);
    process.stderr.write = (chunk, ...rest) => { writes++; return real(chunk, ...rest); };
    const { writeStderr } = await import(${JSON.stringify(module)});
    // The module flushes on exit once something was written: this count runs after that flush.
    writeStderr('');
    process.on('exit', () => writeSync(1, String(writes)));
    const { reportError } = await import(${JSON.stringify(common)});
    ${code}
  `;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return { stderr: r.stderr, writes: Number(r.stdout) };
}

test('lines written in one turn go out in one write, and all of them are there at exit', () => {
  const r = child(`for (let i = 0; i < 1000; i++) writeStderr('line ' + i + '\\n'); process.exit(0);`);
  assert.equal(r.stderr.split('\n').filter(Boolean).length, 1000);
  assert.equal(r.writes, 1);
  const turns = child(`writeStderr('a\\n'); setTimeout(() => { writeStderr('b\\n'); writeStderr('c\\n'); }, 20);`);
  assert.equal(turns.stderr, 'a\nb\nc\n');
  assert.equal(turns.writes, 2);
});

test('an error report comes after the lines logged before it', () => {
  const r = child(`writeStderr('before\\n'); reportError(new Error('boom')); writeStderr('after\\n');`);
  assert.match(r.stderr, /^before\nerror: boom\nafter\n$/);
});
