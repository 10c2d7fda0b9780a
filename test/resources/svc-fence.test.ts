import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { rm, rmdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, afterEach, describe, test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Engine } from '../../src/engine/engine.js';
import { parseGraphText } from '../../src/frontends/load.js';
import { buildGraph } from '../../src/graph/build.js';
import { resourceId } from '../../src/graph/ids.js';
import { createLogger } from '../../src/log.js';
import { builtinKinds } from '../../src/resources/builtin-kinds.js';
import { createRegistry } from '../../src/resources/registry.js';
import { svcKind } from '../../src/resources/svc.js';
import { detectHierarchy, existingCgroup, removeCgroup } from '../../src/resources/svc/cgroup.js';
import { readStat } from '../../src/resources/svc/proc.js';
import { readRecord } from '../../src/resources/svc/record.js';
import type { ResourceLog } from '../../src/resources/types.js';
import { resourceStateDir } from '../../src/state-dir.js';
import { rejection } from '../helpers/assert.js';
import { testWorld } from '../helpers/world.js';

/**
 * The svc fence (fence.ts): a service whose heartbeat is stale is killed by a watchdog outside the agent, also while
 * the agent is frozen, and is not started again until the heartbeat is fresh. Real processes, real files, a real
 * engine (in this process, and in a child process that is SIGSTOPped).
 */

const ROOT = join(fileURLToPath(import.meta.url), '..', '..', '..');
const MAX_AGE_MS = 1000;
/** The watchdog looks every 100 ms; the rest is room for a loaded 2-core host. The brief's aim is ~500 ms. */
const KILL_MARGIN_MS = 1000;

const dirs: string[] = [];
const engines: Engine[] = [];
const agents: ChildProcess[] = [];
/** Every pid file a test's services write into: whatever is in them is killed afterwards. */
const pidFiles: string[] = [];
const cgroups: { id: string; stateDir: string }[] = [];

afterEach(async () => {
  for (const a of agents.splice(0)) {
    a.kill('SIGCONT');
    a.kill('SIGKILL');
  }
  for (const e of engines.splice(0)) await e.stop();
  for (const f of pidFiles.splice(0)) for (const pid of pidsIn(f)) kill(-pid);
  for (const c of cgroups.splice(0)) {
    const cg = await existingCgroup(c.id, c.stateDir);
    for (let i = 0; i < 100 && (await removeCgroup(cg), await existingCgroup(c.id, c.stateDir)).dirs.length > 0; i++) await sleep(20);
  }
});
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
  const h = await detectHierarchy();
  for (const root of [...h.v1.values(), ...(h.v2 !== undefined ? [h.v2] : [])]) await rmdir(join(root, 'backplane')).catch(() => undefined);
});

function kill(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone
  }
}

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'bp-fence-'));
  dirs.push(d);
  return d;
}

function pidsIn(file: string): number[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map(Number);
}

/** Dead or a zombie (a dead orphan stays a zombie until PID 1 reaps it). */
async function alive(pid: number): Promise<boolean> {
  const st = await readStat(pid);
  return st !== undefined && st.state !== 'Z';
}

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** What the agent does: touch the heartbeat while it can confirm its place in the cluster. */
class Heartbeat {
  private timer: NodeJS.Timeout | undefined;
  /** When it was last touched (ms, the file's mtime). */
  last = 0;
  constructor(readonly path: string) {}
  start(): void {
    this.touch();
    this.timer ??= setInterval(() => this.touch(), 100);
  }
  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }
  touch(): void {
    if (!existsSync(this.path)) closeSync(openSync(this.path, 'a'));
    const now = Date.now();
    utimesSync(this.path, now / 1000, now / 1000);
    this.last = now;
  }
  /** A heartbeat last touched `ms` ago. */
  age(ms: number): void {
    if (!existsSync(this.path)) writeFileSync(this.path, '');
    const then = (Date.now() - ms) / 1000;
    utimesSync(this.path, then, then);
  }
}

/** A service that appends its pid to `pids` and then is `sleep` (exec keeps the pid). */
function graphYaml(o: { name: string; heartbeat: string; pids: string; maxAgeMs?: number; extra?: string[] }): string {
  return [
    'resources:',
    '  - kind: svc',
    `    name: ${o.name}`,
    `    cmd: ["sh", "-c", ${JSON.stringify(`echo $$ >> ${o.pids}; exec sleep 300`)}]`,
    `    fence: { heartbeat: ${JSON.stringify(o.heartbeat)}, maxAge: ${o.maxAgeMs ?? MAX_AGE_MS}ms }`,
    '    onAgentExit: stop',
    ...(o.extra ?? []),
    '',
  ].join('\n');
}

interface Agent {
  readonly engine: Engine;
  readonly lines: string[];
  readonly stateDir: string;
  set(yaml: string): Promise<void>;
  status(id: string): { state: string; error?: string } | undefined;
}

function agent(): Agent {
  const registry = createRegistry(builtinKinds.some((k) => k.kind === 'svc') ? builtinKinds : [...builtinKinds, svcKind]);
  const lines: string[] = [];
  const stateDir = join(tempDir(), 'state');
  const engine = new Engine({ registry, log: createLogger({ level: 'debug', write: (l) => lines.push(l) }), stateDir });
  engines.push(engine);
  return {
    engine,
    lines,
    stateDir,
    set: async (yaml) => {
      await engine.setGraph(buildGraph(parseGraphText('/test/graph.yaml', yaml), registry));
    },
    status: (id) => engine.status().find((s) => s.id === id),
  };
}

async function track(stateDir: string, name: string, pids: string): Promise<void> {
  pidFiles.push(pids);
  cgroups.push({ id: `svc[${name}]`, stateDir: await resourceStateDir(stateDir, `svc[${name}]`) });
}

/** Logger/watchdog processes of the services under `stateDir` (their argv holds the marker path in it). */
function watchdogs(stateDir: string): number[] {
  const out: number[] = [];
  for (const n of readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    try {
      const cmd = readFileSync(`/proc/${n}/cmdline`, 'utf8');
      if (cmd.includes('startFence') && cmd.includes(stateDir)) out.push(Number(n));
    } catch {
      // gone
    }
  }
  return out;
}

/** Converged means spawned: the service's shell may not have written its pid yet. */
async function nthPid(pids: string, n: number): Promise<number> {
  await waitFor(`pid #${n} in ${pids}`, () => pidsIn(pids).length >= n, 5000);
  const pid = pidsIn(pids)[n - 1];
  assert.ok(pid !== undefined);
  return pid;
}

/** Waits until `pid` is dead; returns when (ms, Date.now()). */
async function deathOf(pid: number, timeoutMs: number): Promise<number> {
  await waitFor(`pid ${pid} to be killed`, async () => !(await alive(pid)), timeoutMs);
  return Date.now();
}

const latencies: number[] = [];
after(() => {
  if (latencies.length > 0) console.log(`# fence kill latency past maxAge (ms): ${latencies.map((l) => l.toFixed(0)).join(', ')}`);
});

describe('svc fence', () => {
  test('(a) with a fresh heartbeat the service runs; removed, it and its watchdog are gone', async () => {
    const dir = tempDir();
    const hb = new Heartbeat(join(dir, 'heartbeat'));
    const pids = join(dir, 'pids');
    hb.start();
    try {
      const a = agent();
      await track(a.stateDir, 'web', pids);
      await a.set(graphYaml({ name: 'web', heartbeat: hb.path, pids }));
      await waitFor('svc[web] to converge', () => a.status('svc[web]')?.state === 'converged');
      const pid = await nthPid(pids, 1);
      assert.ok(await alive(pid));
      const dogs = watchdogs(a.stateDir);
      assert.equal(dogs.length, 1, 'one watchdog per start');
      // Well past maxAge, with the heartbeat kept fresh: still the same process.
      await sleep(MAX_AGE_MS * 2);
      assert.ok(await alive(pid));
      assert.deepEqual(pidsIn(pids), [pid]);
      // The watchdog must not outlive the service.
      await a.set('resources: []\n');
      await waitFor('the service to stop', async () => !(await alive(pid)));
      await waitFor('its watchdog to exit', () => watchdogs(a.stateDir).length === 0, 5000);
    } finally {
      hb.stop();
    }
  });

  test('(b) a stale heartbeat kills it within maxAge plus a poll; no restart while stale; fresh again, it starts; never a crash loop', async () => {
    const dir = tempDir();
    const hb = new Heartbeat(join(dir, 'heartbeat'));
    const pids = join(dir, 'pids');
    hb.start();
    try {
      const a = agent();
      await track(a.stateDir, 'api', pids);
      // Two fencings would be a crash loop if they counted as crashes.
      await a.set(graphYaml({ name: 'api', heartbeat: hb.path, pids, extra: ['    crashLoop: { failures: 2, window: 1m }'] }));
      await waitFor('svc[api] to converge', () => a.status('svc[api]')?.state === 'converged');
      for (let round = 1; round <= 2; round++) {
        const pid = await nthPid(pids, round);
        assert.ok(await alive(pid), `round ${round}: running`);
        const started = pidsIn(pids).length;
        hb.stop();
        const expiry = hb.last + MAX_AGE_MS;
        const died = await deathOf(pid, MAX_AGE_MS + KILL_MARGIN_MS + 2000);
        const latency = died - expiry;
        latencies.push(latency);
        assert.ok(died >= expiry - 50, `round ${round}: killed ${expiry - died} ms before the heartbeat was stale`);
        assert.ok(latency <= KILL_MARGIN_MS, `round ${round}: killed ${latency.toFixed(0)} ms after the heartbeat went stale`);
        // Stale: nothing is started, and the resource says why.
        await waitFor('the fenced error', () => /fenced: the heartbeat .* is [\d.]+s old \(max 1\.00s\); the agent has not confirmed its place in the cluster/.test(a.status('svc[api]')?.error ?? ''));
        await sleep(1500);
        assert.equal(pidsIn(pids).length, started, `round ${round}: started again while the heartbeat was stale`);
        assert.ok(a.lines.some((l) => /was killed by the fence watchdog/.test(l)), a.lines.join(''));
        // Fresh again: started again by itself (the supervisor's watch calls changed()).
        const t0 = Date.now();
        hb.start();
        await waitFor(`round ${round}: a new process`, () => pidsIn(pids).length === started + 1, 5000);
        await waitFor('svc[api] to converge again', () => a.status('svc[api]')?.state === 'converged');
        console.log(`# round ${round}: killed ${latency.toFixed(0)} ms past maxAge; started ${Date.now() - t0} ms after the heartbeat was fresh`);
      }
      assert.ok(!a.lines.some((l) => /crash-loop/.test(l)), 'fenced exits counted as crashes');
    } finally {
      hb.stop();
    }
  });

  test('(c) the watchdog works while the agent is frozen (SIGSTOP); after SIGCONT the agent starts it again', async () => {
    const dir = tempDir();
    const heartbeat = join(dir, 'heartbeat');
    const pids = join(dir, 'pids');
    const stateDir = join(dir, 'state');
    const graph = join(dir, 'g.yaml');
    await writeFile(graph, graphYaml({ name: 'frozen', heartbeat, pids }));
    await track(stateDir, 'frozen', pids);
    // A small agent: an engine, and the heartbeat touched from the same event loop, so that SIGSTOP stops both.
    const src = (p: string): string => JSON.stringify(pathToFileURL(join(ROOT, 'src', p)).href);
    const script = join(dir, 'agent.mts');
    await writeFile(
      script,
      [
        `import { closeSync, openSync, readFileSync, utimesSync } from 'node:fs';`,
        `import { Engine } from ${src('engine/engine.ts')};`,
        `import { parseGraphText } from ${src('frontends/load.ts')};`,
        `import { buildGraph } from ${src('graph/build.ts')};`,
        `import { createLogger } from ${src('log.ts')};`,
        `import { builtinKinds } from ${src('resources/builtin-kinds.ts')};`,
        `import { createRegistry } from ${src('resources/registry.ts')};`,
        `import { svcKind } from ${src('resources/svc.ts')};`,
        `const [graphFile, stateDir, heartbeat] = process.argv.slice(2);`,
        `const touch = () => { closeSync(openSync(heartbeat, 'a')); const t = Date.now() / 1000; utimesSync(heartbeat, t, t); };`,
        `touch();`,
        `setInterval(touch, 100);`,
        `const registry = createRegistry(builtinKinds.some((k) => k.kind === 'svc') ? builtinKinds : [...builtinKinds, svcKind]);`,
        `const engine = new Engine({ registry, log: createLogger({ level: 'debug' }), stateDir });`,
        `engine.onSettledChange((s) => { if (s) process.stderr.write('SETTLED\\n'); });`,
        `await engine.setGraph(buildGraph(parseGraphText(graphFile, readFileSync(graphFile, 'utf8')), registry));`,
        '',
      ].join('\n'),
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script, graph, stateDir, heartbeat], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    agents.push(child);
    let out = '';
    child.stderr?.on('data', (b: Buffer) => (out += b.toString()));
    await waitFor('the agent to start the service', async () => {
      const p = pidsIn(pids)[0];
      return p !== undefined && (await readRecord(await resourceStateDir(stateDir, 'svc[frozen]')))?.pid === p;
    }, 30_000);
    const [pid] = pidsIn(pids);
    assert.ok(pid !== undefined);
    await sleep(300);
    assert.ok(await alive(pid), out);

    child.kill('SIGSTOP');
    await waitFor('the agent to be stopped', async () => (await readStat(child.pid ?? 0))?.state === 'T', 2000);
    const { mtimeMs } = statSync(heartbeat);
    const expiry = mtimeMs + MAX_AGE_MS;
    const died = await deathOf(pid, MAX_AGE_MS + KILL_MARGIN_MS + 2000);
    const latency = died - expiry;
    latencies.push(latency);
    assert.equal((await readStat(child.pid ?? 0))?.state, 'T', 'the agent was frozen all along');
    assert.ok(latency <= KILL_MARGIN_MS, `killed ${latency.toFixed(0)} ms after the heartbeat went stale, with the agent frozen`);
    assert.ok(died >= expiry - 50, 'killed before the heartbeat was stale');
    await sleep(500);
    assert.equal(pidsIn(pids).length, 1, 'nothing started while frozen');

    child.kill('SIGCONT');
    // Resumed: it touches the heartbeat again, sees the exit as fenced (no crash), and starts the service again.
    await waitFor('the service to start again after SIGCONT', () => pidsIn(pids).length === 2, 10_000);
    await waitFor('the agent to log the fencing', () => /was killed by the fence watchdog/.test(out), 5000);
    console.log(`# frozen agent: service killed ${latency.toFixed(0)} ms past maxAge`);
  });

  test('(d) with a stale or missing heartbeat the process is never started; once fresh, it is', async () => {
    const dir = tempDir();
    const hb = new Heartbeat(join(dir, 'heartbeat'));
    const pids = join(dir, 'pids');
    hb.age(4200);
    const a = agent();
    await track(a.stateDir, 'late', pids);
    await a.set(graphYaml({ name: 'late', heartbeat: hb.path, pids }));
    await waitFor('the fenced error', () => (a.status('svc[late]')?.error ?? '') !== '');
    assert.match(a.status('svc[late]')?.error ?? '', /fenced: the heartbeat .*heartbeat is 4\.\d\ds old \(max 1\.00s\); the agent has not confirmed its place in the cluster/);
    await sleep(1500);
    assert.equal(existsSync(pids), false, 'the process was started with a stale heartbeat');
    assert.equal(watchdogs(a.stateDir).length, 0);
    try {
      hb.start();
      await waitFor('the service to start once fresh', () => pidsIn(pids).length === 1, 5000);
      await waitFor('svc[late] to converge', () => a.status('svc[late]')?.state === 'converged');
    } finally {
      hb.stop();
    }

    // Missing: the same, said so.
    const world = testWorld({ stateRoot: tempDir() });
    const missing = join(dir, 'no-such-heartbeat');
    const res = svcKind.create(resourceId('svc', 'missing'), svcKind.schema.parse({ cmd: ['sh', '-c', `echo $$ >> ${pids}.2; exec sleep 300`], fence: { heartbeat: missing, maxAge: '1s' } }), world);
    pidFiles.push(`${pids}.2`);
    const quiet: ResourceLog = { change: () => undefined, info: () => undefined, warn: () => undefined, debug: () => undefined };
    const err = await rejection(res.checkApply({ apply: true, refresh: false, signal: new AbortController().signal, log: quiet }));
    assert.match(err.message, /fenced: the heartbeat .*no-such-heartbeat does not exist \(max 1\.00s\)/);
    assert.equal(existsSync(`${pids}.2`), false);
    await res.close?.('removed');
  });

  test('(e) without log files (output to /dev/null) the watchdog still guards the service, and ends with it', async () => {
    const dir = tempDir();
    const hb = new Heartbeat(join(dir, 'heartbeat'));
    const pids = join(dir, 'pids');
    hb.start();
    try {
      const a = agent();
      await track(a.stateDir, 'quiet', pids);
      await a.set(graphYaml({ name: 'quiet', heartbeat: hb.path, pids, extra: ['    log: { stdout: /dev/null, stderr: /dev/null }'] }));
      await waitFor('svc[quiet] to converge', () => a.status('svc[quiet]')?.state === 'converged');
      const pid = await nthPid(pids, 1);
      assert.equal(watchdogs(a.stateDir).length, 1, 'a watchdog without pipes');
      hb.stop();
      const expiry = hb.last + MAX_AGE_MS;
      const latency = (await deathOf(pid, MAX_AGE_MS + KILL_MARGIN_MS + 2000)) - expiry;
      latencies.push(latency);
      assert.ok(latency <= KILL_MARGIN_MS, `killed ${latency.toFixed(0)} ms after the heartbeat went stale`);
      await waitFor('the watchdog to exit with the service', () => watchdogs(a.stateDir).length === 0, 3000);
    } finally {
      hb.stop();
    }
  });

  test('schema: heartbeat must be absolute, maxAge at least 300ms; the fence is part of the definition', () => {
    const issues = (p: Record<string, unknown>): string[] => {
      const r = svcKind.schema.safeParse(p);
      return r.success ? [] : r.error.issues.map((i) => i.message);
    };
    assert.ok(issues({ cmd: ['x'], fence: { heartbeat: 'hb', maxAge: '1s' } }).some((m) => /absolute path/.test(m)));
    assert.ok(issues({ cmd: ['x'], fence: { heartbeat: '/hb', maxAge: '100ms' } }).some((m) => /at least 300ms/.test(m)));
    assert.ok(issues({ cmd: ['x'], fence: { heartbeat: '/hb' } }).length > 0, 'maxAge is required');
    assert.ok(issues({ cmd: ['x'], fence: { heartbeat: '/hb', maxAge: '1s', grace: 1 } }).length > 0, 'unknown keys are refused');
    const p = svcKind.schema.parse({ cmd: ['x'], fence: { heartbeat: '/run/hb', maxAge: '1.5s' } });
    assert.deepEqual(p.fence, { heartbeat: '/run/hb', maxAge: 1500 });
  });
});
