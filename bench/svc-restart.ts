/**
 * How fast does a supervised service come back after `kill -9`?
 *
 *   node --import tsx bench/svc-restart.ts [--kills 50] [--adopted 20]
 *
 * A node TCP server runs under the svc kind's supervisor (in this process, as the agent would run it). Each round
 * kills it with SIGKILL and measures (a) until the supervisor has spawned the replacement (its changed() report)
 * and (b) until the new process accepts a TCP connection. The server's own cold start (spawn -> accepting, without
 * any supervisor) is measured too, so the supervisor's share is answer − cold start.
 *
 * With --adopted N, the same is measured N times for a process adopted from an earlier "agent" (another process
 * that started it and exited): it is nobody's child, so its exit is not an event but is found by polling /proc.
 *
 * The svc is configured with backoff.reset: 0s (every kill counts as a crash after a stable run, so it restarts at
 * once) and a crash-loop threshold above the number of kills; with the defaults, 50 kills in a minute would
 * correctly be a crash loop. The last line printed is JSON.
 *
 * With --nginx N (default 20 when /usr/sbin/nginx exists and this runs as root; 0 skips it), the same for nginx from
 * Debian: kill -9 of its master, until it answers an HTTP GET with its page again. Workers left behind by the dead
 * master hold the port, so the supervisor ends them (the service's cgroup) before the restart can bind, which the
 * node server has no need of. This figure is in the README, so the bench fails loudly (exit 1) when the
 * median passes --nginx-max-ms (default 1000) or the slowest round --nginx-max-worst-ms (default 3000), and prints
 * what held otherwise.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { existsSync } from 'node:fs';
import { chmod, mkdir } from 'node:fs/promises';
import { gatherFacts } from '../src/facts.js';
import { resourceId } from '../src/graph/ids.js';
import { svcKind } from '../src/resources/svc.js';
import { readRecord } from '../src/resources/svc/record.js';
import type { Resource, ResourceLog, ResourceWorld } from '../src/resources/types.js';
import { resourceStateDir } from '../src/state-dir.js';
import { median, percentile } from './lib/stats.js';
import { machineInfo } from './lib/sysinfo.js';
import { makeStack } from './lib/nginx.js';
import { templateIn } from './tools/types.js';
import { answers, freePort } from '../test/helpers/net.js';

const SERVER = `
const s = require('net').createServer((c) => { c.on('error', () => {}); c.end('hi\\n'); });
s.listen(Number(process.env.PORT), '127.0.0.1');
`;

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i === -1 ? undefined : Number(process.argv[i + 1]);
  return v !== undefined && Number.isFinite(v) ? v : fallback;
}



/** Polls every millisecond: the thing measured is a few tens of milliseconds. */
async function until(cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<number> {
  const t0 = performance.now();
  while (!(await cond())) {
    if (performance.now() - t0 > timeoutMs) throw new Error('timed out');
    await sleep(1);
  }
  return performance.now();
}

const silent: ResourceLog = { change: () => undefined, info: () => undefined, warn: () => undefined, debug: () => undefined };

interface Stats {
  readonly n: number;
  readonly median: number;
  readonly p99: number;
  readonly max: number;
}

function stats(xs: readonly number[]): Stats {
  const r = (v: number | undefined): number => Math.round((v ?? NaN) * 10) / 10;
  return { n: xs.length, median: r(median(xs)), p99: r(percentile(xs, 99)), max: r(Math.max(...xs)) };
}

async function coldStart(port: number, rounds: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t0 = performance.now();
    const child = spawn(process.execPath, ['-e', SERVER], { env: { ...process.env, PORT: String(port) }, stdio: 'ignore' });
    const t1 = await until(() => answers(port));
    out.push(t1 - t0);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
  }
  return out;
}

interface Round {
  readonly respawnMs: number;
  readonly answerMs: number;
}

/** Kills the supervised process `kills` times; `watch` must be running so restarts are reported. */
async function killRounds(res: Resource, world: ResourceWorld, id: ReturnType<typeof resourceId>, up: () => Promise<boolean>, kills: number, restarted: () => number): Promise<Round[]> {
  const dir = await world.stateDir(id);
  const rounds: Round[] = [];
  for (let i = 0; i < kills; i++) {
    const rec = await readRecord(dir);
    if (rec === undefined) throw new Error('no process record');
    await until(up);
    await sleep(20);
    const seen = restarted();
    const t0 = performance.now();
    process.kill(rec.pid, 'SIGKILL');
    const tRespawn = await until(() => restarted() > seen);
    const tAnswer = await until(up);
    rounds.push({ respawnMs: tRespawn - t0, answerMs: tAnswer - t0 });
    // The engine would run checkApply after the report; do the same so the change is taken and reported.
    await res.checkApply({ apply: true, refresh: false, signal: new AbortController().signal, log: silent });
  }
  return rounds;
}

/** A one-shot "agent": starts (or adopts) the svc, lets go of it as an agent shutdown does, and exits. */
async function writeHelper(dir: string): Promise<string> {
  const src = (p: string): string => JSON.stringify(pathToFileURL(join(import.meta.dirname, '..', 'src', p)).href);
  const file = join(dir, 'helper.mjs');
  await writeFile(
    file,
    [
      `import { svcKind } from ${src('resources/svc.ts')};`,
      `import { resourceStateDir } from ${src('state-dir.ts')};`,
      `const { ROOT, ID, PARAMS } = process.env;`,
      `const world = { isProvided: () => false, stateDir: (id) => resourceStateDir(ROOT, id), facts: () => ({}) };`,
      `const res = svcKind.create(ID, svcKind.schema.parse(JSON.parse(PARAMS)), world);`,
      `const log = { change() {}, info() {}, warn() {}, debug() {} };`,
      `await res.checkApply({ apply: true, refresh: false, signal: new AbortController().signal, log });`,
      `await res.close('shutdown');`,
      `process.exit(0);`,
      '',
    ].join('\n'),
  );
  return file;
}

async function runHelper(file: string, env: { root: string; id: string; params: string }): Promise<void> {
  const child = spawn(process.execPath, ['--import', 'tsx', file], {
    env: { ...process.env, ROOT: env.root, ID: env.id, PARAMS: env.params },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const [code] = (await once(child, 'exit')) as [number | null];
  if (code !== 0) throw new Error(`helper agent exited with ${code}`);
}

/** Whether the stack's page comes back whole: the master accepting is not enough, its workers must serve. */
async function serves(url: string, content: string): Promise<boolean> {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(500) });
    return r.status === 200 && (await r.text()) === content;
  } catch {
    return false;
  }
}

/** nginx from Debian under the svc supervisor, killed -9 `kills` times. */
async function nginxRounds(root: string, world: ResourceWorld, kills: number): Promise<{ rounds: Round[]; coldMs: number }> {
  const dir = join(root, 'nginx');
  await mkdir(dir, { recursive: true });
  // nginx's workers run as www-data: they must reach the page.
  await chmod(root, 0o755);
  await chmod(dir, 0o755);
  const stack = await makeStack(dir);
  await writeFile(stack.conf, templateIn(stack, (name) => String(stack.vars[name])));
  await mkdir(stack.docRoot, { recursive: true });
  await writeFile(stack.index.path, stack.index.content);
  const url = `http://127.0.0.1:${stack.port}/`;
  const id = resourceId('svc', 'bench-nginx');
  const params = svcKind.schema.parse({
    cmd: [stack.binary, '-c', stack.conf, '-g', 'daemon off;'],
    stopSignal: 'SIGQUIT',
    backoff: { reset: '0s' },
    crashLoop: { failures: kills + 10, window: '1h' },
    stopTimeout: '5s',
  });
  let restarts = 0;
  const ac = new AbortController();
  const res = svcKind.create(id, params, world);
  try {
    const watching = res.watch?.({
      signal: ac.signal,
      ready: () => undefined,
      changed: (r) => {
        if (r.startsWith('restarted as pid')) restarts++;
      },
      log: silent,
    });
    const t0 = performance.now();
    await res.checkApply({ apply: true, refresh: false, signal: ac.signal, log: silent });
    const coldMs = (await until(() => serves(url, stack.index.content), 30_000)) - t0;
    const rounds = await killRounds(res, world, id, () => serves(url, stack.index.content), kills, () => restarts);
    ac.abort();
    await watching;
    return { rounds, coldMs };
  } finally {
    await res.close?.('removed');
  }
}

async function main(): Promise<void> {
  const kills = arg('kills', 50);
  const adoptedKills = arg('adopted', 0);
  const canNginx = existsSync('/usr/sbin/nginx') && process.getuid?.() === 0;
  const nginxKills = arg('nginx', canNginx ? 20 : 0);
  const nginxMaxMs = arg('nginx-max-ms', 1000);
  const nginxMaxWorstMs = arg('nginx-max-worst-ms', 3000);
  const root = await mkdtemp(join(tmpdir(), 'bp-bench-svc-'));
  const facts = gatherFacts();
  const world: ResourceWorld = { isProvided: () => false, stateDir: (id) => resourceStateDir(root, id), facts: () => facts };
  const port = await freePort();
  const id = resourceId('svc', 'bench');
  const input = {
    cmd: [process.execPath, '-e', SERVER],
    env: { PORT: String(port) },
    backoff: { reset: '0s' },
    crashLoop: { failures: kills + adoptedKills + 10, window: '1h' },
    stopTimeout: '2s',
  };
  const params = svcKind.schema.parse(input);
  const resources: Resource[] = [];
  const cleanup = async (): Promise<void> => {
    for (const r of resources) await r.close?.('removed');
    await rm(root, { recursive: true, force: true });
  };

  try {
    const cold = await coldStart(port, 10);

    // A supervisor whose process is its own child: the exit is an event.
    let restarts = 0;
    const ac = new AbortController();
    const own = svcKind.create(id, params, world);
    resources.push(own);
    const watching = own.watch?.({
      signal: ac.signal,
      ready: () => undefined,
      changed: (r) => {
        if (r.startsWith('restarted as pid')) restarts++;
      },
      log: silent,
    });
    await own.checkApply({ apply: true, refresh: false, signal: ac.signal, log: silent });
    const ownRounds = await killRounds(own, world, id, () => answers(port), kills, () => restarts);
    ac.abort();
    await watching;

    let adoptedRounds: Round[] = [];
    if (adoptedKills > 0) {
      await own.close?.('removed');
      resources.splice(resources.indexOf(own), 1);
      const helper = await writeHelper(root);
      let adoptedRestarts = 0;
      for (let i = 0; i < adoptedKills; i++) {
        // An earlier "agent" (another process) starts the service and exits: the service is now nobody's child.
        await runHelper(helper, { root, id, params: JSON.stringify(input) });
        const ac2 = new AbortController();
        const next = svcKind.create(id, params, world);
        resources.push(next);
        const w = next.watch?.({
          signal: ac2.signal,
          ready: () => undefined,
          changed: (r) => {
            if (r.startsWith('restarted as pid')) adoptedRestarts++;
          },
          log: silent,
        });
        await next.checkApply({ apply: true, refresh: false, signal: ac2.signal, log: silent });
        adoptedRounds = [...adoptedRounds, ...(await killRounds(next, world, id, () => answers(port), 1, () => adoptedRestarts))];
        ac2.abort();
        await w;
        // The replacement is this process's child; stop it so the next round adopts a true orphan again.
        await next.close?.('removed');
        resources.splice(resources.indexOf(next), 1);
      }
    }

    const nginx = nginxKills > 0 ? await nginxRounds(root, world, nginxKills) : undefined;

    const result = {
      bench: 'svc-restart',
      what: 'ms from kill -9 of a supervised node TCP server to the respawn, and to it accepting connections again',
      kills,
      respawnMs: stats(ownRounds.map((r) => r.respawnMs)),
      answerMs: stats(ownRounds.map((r) => r.answerMs)),
      serverColdStartMs: stats(cold),
      ...(adoptedRounds.length > 0
        ? { adopted: { respawnMs: stats(adoptedRounds.map((r) => r.respawnMs)), answerMs: stats(adoptedRounds.map((r) => r.answerMs)) } }
        : {}),
      ...(nginx === undefined
        ? {}
        : {
            nginx: {
              what: 'ms from kill -9 of the nginx master to the respawn, and to its page being served again',
              kills: nginx.rounds.length,
              respawnMs: stats(nginx.rounds.map((r) => r.respawnMs)),
              answerMs: stats(nginx.rounds.map((r) => r.answerMs)),
              coldStartMs: Math.round(nginx.coldMs),
              thresholds: { medianMs: nginxMaxMs, worstMs: nginxMaxWorstMs },
            },
          }),
      config: { backoffReset: '0s', crashLoopFailures: kills + adoptedKills + 10 },
      machine: machineInfo(),
    };
    if (nginx !== undefined) {
      const a = stats(nginx.rounds.map((r) => r.answerMs));
      const figure = `nginx answering again after kill -9 of its master: median ${a.median} ms, p99 ${a.p99} ms, max ${a.max} ms over ${a.n} kills`;
      if (a.median > nginxMaxMs || a.max > nginxMaxWorstMs) {
        console.error(`FAIL: ${figure}; the README's figure holds only up to a median of ${nginxMaxMs} ms and a worst case of ${nginxMaxWorstMs} ms`);
        process.exitCode = 1;
      } else {
        console.error(`holds: ${figure} (thresholds: median ${nginxMaxMs} ms, worst ${nginxMaxWorstMs} ms)`);
      }
    }
    console.log(JSON.stringify(result));
  } finally {
    await cleanup();
  }
}

await main();
