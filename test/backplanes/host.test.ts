import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BackplaneHost } from '../../src/backplanes/host.js';
import { checkTrusted, findBackplane } from '../../src/backplanes/registry.js';
import type { ReactInput } from '../../src/backplanes/sdk.js';

// A broken backplane (throws, hangs, returns nonsense, dies, eats memory) must end in a clear error for its object
// and never take the controller's process down: each kind runs in a worker thread of its own with limits.

const params = '{ safeParse: (v) => ({ success: true, data: v }) }';
const modules: Record<string, string> = {
  good: `export default { kind: 'good', description: '', params: ${params}, expand: () => [], react: (i) => ({ status: { summary: 'members ' + i.members.length }, memory: { n: ((i.memory && i.memory.n) || 0) + 1 } }) };`,
  throws: `export default { kind: 'throws', description: '', params: ${params}, expand: () => [], react: () => { throw new Error('boom at line 1'); } };`,
  hangs: `export default { kind: 'hangs', description: '', params: ${params}, expand: () => [], reactTimeoutMs: 300, react: () => { for (;;) {} } };`,
  nonsense: `export default { kind: 'nonsense', description: '', params: ${params}, expand: () => [], react: () => ({ config: 'everyone is primary' }) };`,
  fn: `export default { kind: 'fn', description: '', params: ${params}, expand: () => [], react: () => ({ memory: () => 1 }) };`,
  exits: `export default { kind: 'exits', description: '', params: ${params}, expand: () => [], react: () => { process.exit(3); } };`,
  importfails: `throw new Error('cannot load me');`,
  wrongkind: `export default { kind: 'other', description: '', params: ${params}, expand: () => [], react: () => ({}) };`,
  hog: `export default { kind: 'hog', description: '', params: ${params}, expand: () => [], reactTimeoutMs: 20000, react: () => { const a = []; for (;;) a.push(new Array(1e5).fill(Math.random())); } };`,
  loose: `export default { kind: 'loose', description: '', params: ${params}, expand: () => [], react: () => ({}) };`,
};

const input = (kind: string): ReactInput<unknown> => ({ now: Date.now(), object: { kind, name: 'x', params: {} }, deployedAt: 'd', services: [], members: [] });

describe('backplane host: a broken backplane cannot take the controller down', () => {
  let dir: string;
  let host: BackplaneHost;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bp-host-'));
    for (const [kind, code] of Object.entries(modules)) {
      await mkdir(join(dir, kind), { mode: 0o755 });
      await writeFile(join(dir, kind, 'index.mjs'), code, { mode: 0o644 });
    }
    await chmod(join(dir, 'loose'), 0o777);
    host = new BackplaneHost({ path: [dir], retryMs: 0, memoryMb: 32 });
  });
  after(async () => {
    await host.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('runs a working backplane and checks what it returns', async () => {
    const r = await host.react('good', input('good'));
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(r.output.status?.summary, 'members 0');
  });

  it('a backplane that throws is an error naming it, and the next call runs again', async () => {
    const r = await host.react('throws', input('throws'));
    assert.equal(r.ok, false);
    assert.match(!r.ok ? r.error : '', /react threw: boom at line 1/);
    assert.equal((await host.react('throws', input('throws'))).ok, false);
  });

  it('a backplane that hangs is cut off at its time limit while others keep answering', async () => {
    const t0 = Date.now();
    const [hung, good] = await Promise.all([host.react('hangs', input('hangs')), host.react('good', input('good'))]);
    assert.equal(hung.ok, false);
    assert.match(!hung.ok ? hung.error : '', /did not return within 300 ms/);
    assert.ok(Date.now() - t0 < 15_000);
    assert.ok(good.ok);
  });

  it('nonsense, functions, exits and import failures are clear errors', async () => {
    const nonsense = await host.react('nonsense', input('nonsense'));
    assert.match(!nonsense.ok ? nonsense.error : '', /returned nonsense: config/);
    const fn = await host.react('fn', input('fn'));
    assert.match(!fn.ok ? fn.error : '', /not plain data/);
    const exits = await host.react('exits', input('exits'));
    assert.match(!exits.ok ? exits.error : '', /worker ended/);
    const imp = await host.react('importfails', input('importfails'));
    assert.match(!imp.ok ? imp.error : '', /failed to load: cannot load me/);
    const wrong = await host.react('wrongkind', input('wrongkind'));
    assert.match(!wrong.ok ? wrong.error : '', /says it is kind "other"/);
    const none = await host.react('absent', input('absent'));
    assert.match(!none.ok ? none.error : '', /no backplane for kind "absent"/);
  });

  it('a backplane that eats memory is ended by its heap limit, not the process', async () => {
    const r = await host.react('hog', input('hog'));
    assert.equal(r.ok, false);
    assert.match(!r.ok ? r.error : '', /worker ended|memory/i);
    assert.ok((await host.react('good', input('good'))).ok, 'the others still work');
  });

  it('refuses a module others could change', async () => {
    const r = await host.react('loose', input('loose'));
    assert.match(!r.ok ? r.error : '', /writable by group or others/);
    const ref = await findBackplane('loose', [dir]);
    assert.ok(ref !== undefined && !ref.shipped);
    await assert.rejects(checkTrusted(!ref.shipped ? ref.file : ''), /writable by group or others/);
  });

  it('finds the shipped backplanes first', async () => {
    assert.deepEqual(await findBackplane('redis', [dir]), { kind: 'redis', shipped: true });
    assert.equal(await findBackplane('../etc', [dir]), undefined);
  });
});
