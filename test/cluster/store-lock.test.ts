import assert from 'node:assert/strict';
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { chmod, mkdtemp, readFile, readdir, readlink, realpath, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { EmbeddedStore } from '../../src/cluster/embedded-store.js';
import { createOtherUser, skipReason, type OtherUser } from '../helpers/other-user.js';
import { until } from './store-contract.js';

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'bp-lock-'));
  dirs.push(d);
  return d;
}

const STORE_MODULE = fileURLToPath(new URL('../../src/cluster/embedded-store.ts', import.meta.url));

type Holder = ChildProcessByStdio<Writable, Readable, null> & { out: () => string };

/**
 * A root process that waits for "go" on stdin, then opens the store in `dir` and prints "open" (and the pid of a
 * `sleep` it started, standing in for a svc that outlives the agent) or "locked", and stays up until killed.
 */
function holder(dir: string): Holder {
  const code = `
    const { EmbeddedStore } = await import(${JSON.stringify(STORE_MODULE)});
    process.stdout.write('ready\\n');
    process.stdin.once('data', async () => {
      try {
        const s = await EmbeddedStore.open({ dir: ${JSON.stringify(dir)} });
        await s.put('by', String(process.pid));
        const { spawn } = await import('node:child_process');
        const c = spawn('sleep', ['60'], { detached: true, stdio: 'ignore' });
        c.unref();
        process.stdout.write('open ' + c.pid + '\\n');
      } catch (err) {
        process.stdout.write((err.reason ?? 'error ' + err.message) + '\\n');
      }
    });
    setInterval(() => {}, 1000);
  `;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  return Object.assign(child, { out: () => out });
}

async function kill9(child: { kill: (s: NodeJS.Signals) => boolean; exitCode: number | null; signalCode: string | null } & NodeJS.EventEmitter): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
}

/** Inodes of sockets that `pid` holds open and that listen (unix, tcp or tcp6): what another user could connect to. */
async function listeningSockets(pid: number): Promise<string[]> {
  const held = new Set<string>();
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m?.[1] !== undefined) held.add(m[1]);
  }
  const listening: string[] = [];
  // /proc/net/unix: Num RefCount Protocol Flags Type St Inode Path; __SO_ACCEPTCON (0x10000) marks a listener.
  for (const line of (await readFile('/proc/net/unix', 'utf8')).split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f[3] === '00010000' && f[6] !== undefined && held.has(f[6])) listening.push(`unix ${f[6]} ${f[7] ?? ''}`);
  }
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await readFile(file, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[3] === '0A' && f[9] !== undefined && held.has(f[9])) listening.push(`${file} ${f[1] ?? ''}`);
    }
  }
  return listening;
}

/** The name the store's lock used to listen on: an abstract unix socket any local user could bind or connect to. */
async function oldAbstractName(dir: string): Promise<string> {
  return `\0backplane-store-${createHash('sha256').update(await realpath(dir)).digest('hex').slice(0, 40)}`;
}

describe('embedded store lock: no other local user can take, block or flood it', { skip: skipReason }, () => {
  let other: OtherUser;
  const children: { kill: (s: NodeJS.Signals) => boolean }[] = [];
  before(() => {
    other = createOtherUser();
  });
  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    other.remove();
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });

  test('a user who binds the old socket name first, or tries files in and around the lock, cannot stop the store from opening', async () => {
    const base = await tempDir();
    // Traversable by others (not writable): the attacker gets as far as the store directory itself.
    await chmod(base, 0o755);
    const dir = join(base, 'store');
    await (await EmbeddedStore.open({ dir })).close();
    assert.equal((await stat(dir)).mode & 0o777, 0o700, 'the store directory is created 0700');

    const name = await oldAbstractName(dir);
    const squatter = other.start(`
      import net from 'node:net';
      import fs from 'node:fs';
      import { spawnSync } from 'node:child_process';
      const tries = {};
      const attempt = (what, fn) => { try { fn(); tries[what] = 'done'; } catch (e) { tries[what] = e.code ?? e.message; } };
      attempt('open lock', () => fs.openSync(${JSON.stringify(join(dir, 'lock'))}, 'r'));
      attempt('create in store dir', () => fs.writeFileSync(${JSON.stringify(join(dir, 'planted'))}, 'x'));
      attempt('plant a lock beside it', () => fs.symlinkSync('/tmp', ${JSON.stringify(join(base, 'store2'))}));
      attempt('replace the store dir', () => fs.renameSync(${JSON.stringify(dir)}, ${JSON.stringify(join(base, 'gone'))}));
      tries.flock = spawnSync('flock', ['-xn', ${JSON.stringify(join(dir, 'lock'))}, 'true']).status === 0 ? 'took the lock' : 'failed';
      const srv = net.createServer((c) => c.destroy());
      srv.listen({ path: ${JSON.stringify(name)} }, () => process.stdout.write(JSON.stringify(tries) + '\\n'));
    `);
    children.push(squatter);
    let out = '';
    squatter.stdout.on('data', (b: Buffer) => (out += b.toString()));
    await until('the other user to bind the old lock name', () => out.includes('\n'), 20_000);
    const tries = JSON.parse(out) as Record<string, string | number>;
    assert.deepEqual(tries, { 'open lock': 'EACCES', 'create in store dir': 'EACCES', 'plant a lock beside it': 'EACCES', 'replace the store dir': 'EACCES', flock: 'failed' });

    const s = await EmbeddedStore.open({ dir });
    try {
      await s.put('k', 'v');
      assert.equal((await s.get('k'))?.value, 'v');
      assert.equal((await stat(join(dir, 'lock'))).mode & 0o777, 0o600, 'the lock file is 0600');
    } finally {
      await s.close();
      await kill9(squatter);
    }
  });

  test('the store holder listens on nothing: thousands of connection attempts by another user all fail, and it keeps working', async () => {
    const dir = join(await tempDir(), 'store');
    const h = holder(dir);
    children.push(h);
    await until('the holder to load', () => h.out().includes('ready'), 30_000);
    h.stdin.write('go\n');
    await until('the holder to open the store', () => /open|locked|error/.test(h.out()), 30_000);
    assert.match(h.out(), /open \d+/);
    assert.ok(h.pid !== undefined);
    assert.deepEqual(await listeningSockets(h.pid), [], 'no socket of the store holder accepts connections');

    const flood = await other.node(`
      import net from 'node:net';
      const name = ${JSON.stringify(await oldAbstractName(dir))};
      let connected = 0, refused = 0;
      await Promise.all(Array.from({ length: 2000 }, () => new Promise((resolve) => {
        const c = net.connect({ path: name });
        c.once('connect', () => { connected++; resolve(); });
        c.once('error', () => { refused++; resolve(); });
      })));
      process.stdout.write(JSON.stringify({ connected, refused }));
      process.exit(0);
    `);
    assert.deepEqual(JSON.parse(flood.stdout), { connected: 0, refused: 2000 }, flood.stderr);
    // It still holds the store: a second open is refused, naming it.
    await assert.rejects(EmbeddedStore.open({ dir }), new RegExp(`in use by another process \\(pid ${h.pid}\\)`));
    await kill9(h);
  });

  test('two processes opening one store at once: exactly one wins; kill -9 frees the lock at once, even while a process it started lives on', async () => {
    for (let round = 0; round < 3; round++) {
      const dir = join(await tempDir(), 'store');
      const pair = [holder(dir), holder(dir)];
      children.push(...pair);
      await until('both to load', () => pair.every((p) => p.out().includes('ready')), 30_000);
      for (const p of pair) p.stdin.write('go\n');
      await until('both to try', () => pair.every((p) => /open|locked|error/.test(p.out())), 30_000);
      const winners = pair.filter((p) => /open \d+/.test(p.out()));
      const losers = pair.filter((p) => p.out().includes('locked'));
      assert.equal(winners.length, 1, `round ${round}: ${pair.map((p) => JSON.stringify(p.out())).join(' / ')}`);
      assert.equal(losers.length, 1);
      const [winner] = winners;
      assert.ok(winner !== undefined);
      const sleeper = Number(/open (\d+)/.exec(winner.out())?.[1]);
      await kill9(winner);
      // At once: no retry, no waiting for a timeout. The sleep it started still runs and must not hold the lock.
      const s = await EmbeddedStore.open({ dir });
      try {
        assert.equal((await s.get('by'))?.value, String(winner.pid));
        const st = await readFile(`/proc/${sleeper}/stat`, 'utf8');
        assert.doesNotMatch(st, /^\d+ \([^)]*\) Z/, 'the process the holder started is still alive');
      } finally {
        await s.close();
        process.kill(sleeper, 'SIGKILL');
        for (const p of losers) await kill9(p);
      }
    }
  });
});
