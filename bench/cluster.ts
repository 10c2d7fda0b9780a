/**
 * How fast do exports travel between agents?
 *
 *   node --import tsx bench/cluster.ts [--agents 3,10,30] [--changes 20]
 *
 * For each cluster size N: a real 3-member etcd on 127.0.0.2-4 (fast timings, see test/helpers/etcd.ts) and N
 * `backplane run` processes, each with its own --hostname and --state-dir. Every agent exports 2 files and collects
 * every export (its own included) into its own purged directory, so it has converged when that directory holds
 * exactly 2N files with the right content. The observer watches the directories (inotify, with a 25 ms poll as a
 * backstop) and reads the files; it never asks the agents.
 *
 *   storm    N-1 agents spawned back to back: time from the last spawn until all N-1 have converged (on 2 cores this
 *            is mostly Node start-up of N-1 processes at once).
 *   join     then the N-th agent: time from its spawn until all N have converged (its own start-up included).
 *   change   --changes times, a different exporter's graph file is edited (its exported content bumped): time from
 *            the write until every other host's collected copy has the new content (median, p99, max).
 *   kill -9  one agent SIGKILLed: until no other host holds its files (bounded by the 3 s lease TTL).
 *   leave    one agent SIGTERMed: until no other host holds its files (it revokes its lease on the way out).
 *
 * Prints a table and writes bench/results/cluster-latest.json.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, mkdirSync, openSync, readFileSync, watch, writeFileSync, renameSync, type FSWatcher } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BIN, ROOT, ensureBuilt } from '../test/helpers/cli.js';
import { startEtcd, type EtcdCluster } from '../test/helpers/etcd.js';
import { median, percentile } from './lib/stats.js';
import { machineInfo } from './lib/sysinfo.js';

interface Options {
  readonly agents: number[];
  readonly changes: number;
}

function parseArgs(argv: readonly string[]): Options {
  const value = (name: string): string | undefined => {
    const i = argv.indexOf(`--${name}`);
    return i === -1 ? undefined : argv[i + 1];
  };
  if (argv.includes('--help')) {
    process.stdout.write('usage: node --import tsx bench/cluster.ts [--agents 3,10,30] [--changes 20]\n');
    process.exit(0);
  }
  const agents = (value('agents') ?? '3,10,30').split(',').map((s) => Number(s.trim()));
  if (agents.some((n) => !Number.isInteger(n) || n < 2 || n > 100)) throw new Error('--agents takes sizes from 2 to 100, e.g. 3,10,30');
  const changes = Number(value('changes') ?? '20');
  if (!Number.isInteger(changes) || changes < 1) throw new Error('--changes takes a positive integer');
  return { agents, changes };
}

interface Agent {
  readonly host: string;
  readonly dir: string;
  readonly graph: string;
  readonly log: string;
  version: number;
  proc: ChildProcess | undefined;
}

interface SizeResult {
  readonly agents: number;
  /** N-1 agents spawned back to back: ms from the last spawn until all of them converged. */
  readonly stormMs: number;
  /** The N-th agent: ms from its spawn until all N converged. */
  readonly joinMs: number;
  /** Until every other host has a change (samplesMs, median, p99, max), and until the first one has it (firstMedianMs). */
  readonly change: { readonly samplesMs: number[]; readonly medianMs: number; readonly p99Ms: number; readonly maxMs: number; readonly firstMedianMs: number };
  readonly kill9RemovalMs: number;
  readonly leaveRemovalMs: number;
  /** Resident memory per agent once converged (median, MiB). */
  readonly rssMiB: number;
}

const CONVERGE_TIMEOUT_MS = 120_000;
const CHANGE_TIMEOUT_MS = 15_000;
const live = new Set<ChildProcess>();

function graphYaml(a: Agent): string {
  return `resources:
  - { kind: file, name: ${a.dir}/exported-1, content: "e1 from ${a.host} v${a.version}\\n", export: true }
  - { kind: file, name: ${a.dir}/exported-2, content: "e2 from ${a.host} v${a.version}\\n", export: true }
  - { kind: file, name: ${a.dir}/collected, type: directory, purge: true }
collect:
  - { kind: file, set: { path: "${a.dir}/collected/{host}-{basename}" } }
`;
}

function writeGraph(a: Agent): void {
  // Atomically, as an editor saves: an agent must never read half a graph.
  writeFileSync(`${a.graph}.tmp`, graphYaml(a));
  renameSync(`${a.graph}.tmp`, a.graph);
}

function expectedContent(a: Agent, i: 1 | 2): string {
  return `e${i} from ${a.host} v${a.version}\n`;
}

function spawnAgent(a: Agent, endpoints: readonly string[], cluster: string, work: string): void {
  const fd = openSync(a.log, 'a');
  const proc = spawn(
    process.execPath,
    [BIN, 'run', '--file', a.graph, '--hostname', a.host, '--etcd', endpoints.join(','), '--cluster', cluster, '--state-dir', join(work, 'state', a.host)],
    { cwd: ROOT, stdio: ['ignore', fd, fd] },
  );
  closeSync(fd);
  a.proc = proc;
  live.add(proc);
  proc.on('exit', () => {
    live.delete(proc);
    if (a.proc === proc) a.proc = undefined;
  });
}

async function stopAgent(a: Agent, signal: NodeJS.Signals): Promise<void> {
  const proc = a.proc;
  if (proc === undefined) return;
  const exited = once(proc, 'exit');
  proc.kill(signal);
  const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

function rssMiB(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m?.[1] === undefined ? undefined : Number(m[1]) / 1024;
  } catch {
    return undefined;
  }
}

/**
 * Watches every host's collected directory and resolves once `check` holds for every host in `hosts`, with the
 * time from `t0` at which the last of them first passed. Events wake the checker at once; the poll is a backstop.
 */
class Observer {
  private readonly watchers: FSWatcher[] = [];
  private kick: (() => void) | undefined;

  constructor(agents: readonly Agent[]) {
    for (const a of agents) {
      mkdirSync(join(a.dir, 'collected'), { recursive: true });
      this.watchers.push(watch(join(a.dir, 'collected'), () => this.kick?.()));
    }
  }

  async until(what: string, hosts: readonly Agent[], check: (a: Agent) => Promise<boolean>, t0: number, timeoutMs: number): Promise<number> {
    return (await this.untilAll(what, hosts, check, t0, timeoutMs)).last;
  }

  /** Like until(), also telling when the first host passed. */
  async untilAll(
    what: string,
    hosts: readonly Agent[],
    check: (a: Agent) => Promise<boolean>,
    t0: number,
    timeoutMs: number,
  ): Promise<{ first: number; last: number }> {
    const pending = new Set(hosts);
    let first: number | undefined;
    let last = 0;
    while (pending.size > 0) {
      if (performance.now() - t0 > timeoutMs) {
        const names = [...pending].map((a) => a.host);
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} on ${names.slice(0, 5).join(', ')}${names.length > 5 ? ` and ${names.length - 5} more` : ''}`);
      }
      const woke = new Promise<void>((resolve) => (this.kick = resolve));
      for (const a of [...pending]) {
        if (await check(a)) {
          pending.delete(a);
          last = performance.now() - t0;
          first ??= last;
        }
      }
      // At least 5 ms apart: while files are landing, events would otherwise keep the checker spinning on CPU
      // that the agents need.
      if (pending.size > 0) await Promise.all([Promise.race([woke, sleep(25)]), sleep(5)]);
    }
    this.kick = undefined;
    return { first: first ?? last, last };
  }

  close(): void {
    for (const w of this.watchers) w.close();
  }
}

/** Exactly the files of `exporters`, each with its current content. */
async function holdsExactly(a: Agent, exporters: readonly Agent[]): Promise<boolean> {
  const names = await readdir(join(a.dir, 'collected')).catch(() => undefined);
  if (names?.length !== exporters.length * 2) return false;
  for (const x of exporters) {
    for (const i of [1, 2] as const) {
      const got = await readFile(join(a.dir, 'collected', `${x.host}-exported-${i}`), 'utf8').catch(() => undefined);
      if (got !== expectedContent(x, i)) return false;
    }
  }
  return true;
}

async function holdsNoneOf(a: Agent, gone: Agent): Promise<boolean> {
  const names = await readdir(join(a.dir, 'collected')).catch(() => [] as string[]);
  return !names.some((n) => n.startsWith(`${gone.host}-`));
}

async function measureSize(n: number, opts: Options, etcd: EtcdCluster, root: string): Promise<SizeResult> {
  const work = join(root, `n${n}`);
  const cluster = `bench-${n}`;
  const agents: Agent[] = [];
  for (let i = 0; i < n; i++) {
    const host = `h${String(i).padStart(2, '0')}`;
    const a: Agent = { host, dir: join(work, host), graph: join(work, `${host}.yaml`), log: join(work, `${host}.log`), version: 0, proc: undefined };
    mkdirSync(a.dir, { recursive: true });
    writeGraph(a);
    agents.push(a);
  }
  const observer = new Observer(agents);
  try {
    const first = agents.slice(0, n - 1);
    const lastAgent = agents[n - 1];
    if (lastAgent === undefined) throw new Error('no agents');
    for (const a of first) spawnAgent(a, etcd.endpoints, cluster, work);
    const stormT0 = performance.now();
    const stormMs = await observer.until('the first agents to converge', first, (a) => holdsExactly(a, first), stormT0, CONVERGE_TIMEOUT_MS);
    progress(`  ${n - 1} agents converged ${ms(stormMs)} after the last was spawned`);

    const joinT0 = performance.now();
    spawnAgent(lastAgent, etcd.endpoints, cluster, work);
    const joinMs = await observer.until('all agents to converge after the last joined', agents, (a) => holdsExactly(a, agents), joinT0, CONVERGE_TIMEOUT_MS);
    progress(`  agent ${n} joined: all converged ${ms(joinMs)} after it was spawned`);
    await sleep(500);
    const rss = agents.map((a) => rssMiB(a.proc?.pid)).filter((v): v is number => v !== undefined);

    const samples: number[] = [];
    const firsts: number[] = [];
    for (let k = 0; k < opts.changes; k++) {
      const exporter = agents[k % n];
      if (exporter === undefined) continue;
      exporter.version++;
      const others = agents.filter((a) => a !== exporter);
      const want = expectedContent(exporter, 1);
      const file = (a: Agent): string => join(a.dir, 'collected', `${exporter.host}-exported-1`);
      const t0 = performance.now();
      writeGraph(exporter);
      const seen = await observer.untilAll(`change ${k + 1} from ${exporter.host}`, others, async (a) => (await readFile(file(a), 'utf8').catch(() => '')) === want, t0, CHANGE_TIMEOUT_MS);
      samples.push(seen.last);
      firsts.push(seen.first);
      // Let the second file and the exporter's own copy land before the next change.
      await observer.until('the change to settle', agents, (a) => holdsExactly(a, agents), t0, CHANGE_TIMEOUT_MS);
      await sleep(100);
    }
    progress(`  ${samples.length} changes: on every host after median ${ms(median(samples) ?? NaN)}, max ${ms(Math.max(...samples))}; on the first host after median ${ms(median(firsts) ?? NaN)}`);

    const victim = agents[n - 1] as Agent;
    const survivors = agents.slice(0, n - 1);
    const killT0 = performance.now();
    await stopAgent(victim, 'SIGKILL');
    const kill9RemovalMs = await observer.until(`${victim.host}'s exports to go after kill -9`, survivors, (a) => holdsNoneOf(a, victim), killT0, CHANGE_TIMEOUT_MS);
    progress(`  kill -9: ${victim.host}'s files gone from the others ${ms(kill9RemovalMs)} later`);

    const leaver = agents[n - 2] as Agent;
    const remaining = agents.slice(0, n - 2);
    const leaveT0 = performance.now();
    const stopped = stopAgent(leaver, 'SIGTERM');
    const leaveRemovalMs =
      remaining.length === 0 ? 0 : await observer.until(`${leaver.host}'s exports to go after SIGTERM`, remaining, (a) => holdsNoneOf(a, leaver), leaveT0, CHANGE_TIMEOUT_MS);
    await stopped;
    progress(`  SIGTERM: ${leaver.host}'s files gone from the others ${ms(leaveRemovalMs)} later`);

    return {
      agents: n,
      stormMs: round(stormMs),
      joinMs: round(joinMs),
      change: { samplesMs: samples.map(round), medianMs: round(median(samples) ?? NaN), p99Ms: round(percentile(samples, 99) ?? NaN), maxMs: round(Math.max(...samples)), firstMedianMs: round(median(firsts) ?? NaN) },
      kill9RemovalMs: round(kill9RemovalMs),
      leaveRemovalMs: round(leaveRemovalMs),
      rssMiB: round(median(rss) ?? NaN),
    };
  } catch (err) {
    const tails = agents
      .filter((a) => a.proc !== undefined)
      .slice(0, 3)
      .map((a) => `--- ${a.host}:\n${readFileSync(a.log, 'utf8').split('\n').slice(-15).join('\n')}`);
    throw new Error(`${err instanceof Error ? err.message : String(err)}\n${tails.join('\n')}`, { cause: err });
  } finally {
    observer.close();
    await Promise.all(agents.map((a) => stopAgent(a, 'SIGTERM')));
    await rm(work, { recursive: true, force: true });
  }
}

function round(v: number): number {
  return Math.round(v * 10) / 10;
}

function ms(v: number): string {
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`;
}

function progress(line: string): void {
  process.stderr.write(`${line}\n`);
}

function table(results: readonly SizeResult[]): string {
  const head = ['agents', 'storm (N-1)', 'join (N-th)', 'change: first host', 'change: all, median', 'p99', 'max', 'kill -9 removal', 'SIGTERM removal', 'RSS/agent'];
  const rows = results.map((r) => [
    String(r.agents),
    ms(r.stormMs),
    ms(r.joinMs),
    ms(r.change.firstMedianMs),
    ms(r.change.medianMs),
    ms(r.change.p99Ms),
    ms(r.change.maxMs),
    ms(r.kill9RemovalMs),
    ms(r.leaveRemovalMs),
    `${Math.round(r.rssMiB)} MiB`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ')} |`;
  return [line(head), `| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |`, ...rows.map(line)].join('\n');
}

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  ensureBuilt();
  const root = await mkdtemp(join(tmpdir(), 'bp-bench-cluster-'));
  let etcd: EtcdCluster | undefined;
  const cleanUp = async (): Promise<void> => {
    for (const p of live) p.kill('SIGKILL');
    await etcd?.stop();
    await rm(root, { recursive: true, force: true });
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    progress(`\nbench: interrupted by ${sig}; cleaning up`);
    void cleanUp().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const results: SizeResult[] = [];
  try {
    etcd = await startEtcd({ members: 3 });
    for (const n of opts.agents) {
      progress(`${n} agents:`);
      results.push(await measureSize(n, opts, etcd, root));
    }
  } finally {
    await cleanUp();
  }

  const out = {
    date: new Date().toISOString(),
    machine: machineInfo(),
    etcd: { members: 3, version: etcdVersion(), heartbeatMs: 25, electionMs: 250 },
    leaseTtlMs: 3000,
    changesPerSize: opts.changes,
    results,
    notes: [
      'storm: N-1 agents spawned back to back, ms from the last spawn until every one holds all 2(N-1) exports; mostly Node start-up on a 2-core machine.',
      'join: ms from spawning the N-th agent until all N hold all 2N exports (includes its start-up and first etcd round trip).',
      'change: ms from writing the exporter\'s graph file until every other host has the new content of the collected file (with --changes 20 or fewer, p99 is the maximum); "first host": until the quickest collector has it. Includes the 50 ms debounce of the graph file reload on the exporter (collectors re-render after 2 ms). All agents share 2 cores, so with N agents the last host waits for N-1 re-renders; on separate machines each host would be about as fast as the first.',
      'kill -9 removal is bounded by the lease TTL (3 s); SIGTERM revokes the lease at once.',
    ],
  };
  process.stdout.write(`\n${table(results)}\n\n`);
  const file = join(ROOT, 'bench', 'results', 'cluster-latest.json');
  writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
  process.stdout.write(`${JSON.stringify(out)}\n`);
  progress(`written to ${file}`);
}

function etcdVersion(): string {
  const out = spawnSync('etcd', ['--version'], { encoding: 'utf8' }).stdout ?? '';
  return /etcd Version: (\S+)/.exec(out)?.[1] ?? 'unknown';
}

main().catch((err: unknown) => {
  process.stderr.write(`bench/cluster: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
