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
 * With each: the CPU time the agents used (from /proc, which a loaded machine stretches far less than wall time),
 * and between the join and the changes, 3 s of doing nothing: an idle agent's CPU per second, which every change on
 * a machine of N agents pays as well. The agents run without NODE_EXTRA_CA_CERTS (the sandbox sets it; Node then
 * parses every system certificate at start, which an agent host has no reason to do).
 *
 * Where the time goes: --keep keeps each size's directory (graphs, state dirs, and each agent's log in logs/, which
 * starts with the moment it was spawned); --log-level debug adds where each agent's connection time went; --prof DIR
 * writes CPU profiles of the N-th agent (--prof-all: of every agent; --prof-hosts h03,h10: of those; --prof-interval
 * 100: sampled every 100 us instead of Node's 1 ms). --bin and --alt-bin measure other builds of the CLI, the second
 * interleaved with the first (--repeat K runs each K times).
 *
 * Every size runs twice, interleaved: `signed`, today's agents (host h00 holds the cluster CA, the others join with a
 * token; every record is signed and every collected export verified), and `unsigned`, the agents of the last commit
 * before host identity (--baseline, built from git in a temporary worktree), so the table shows what signing and
 * verifying cost on export propagation. It fails loudly when the signed median change latency is more than 1.5x
 * the unsigned one (plus 30 ms of noise allowance), and with 30 agents or more when a change or the join is slower,
 * or an idle agent busier, than LIMITS_30.
 *
 * Prints a table and writes bench/results/cluster-latest.json.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, mkdirSync, openSync, readFileSync, symlinkSync, watch, writeFileSync, writeSync, renameSync, type FSWatcher } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BIN, ROOT, ensureBuilt } from '../test/helpers/cli.js';
import { startEtcd, type EtcdCluster } from '../test/helpers/etcd.js';
import { EtcdStore } from '../src/cluster/etcd-store.js';
import { generateKeyPair } from '../src/cluster/identity.js';
import { sealHosts, sealRecord, TrustView, withHost } from '../src/cluster/trust.js';
import { median, percentile } from './lib/stats.js';
import { machineInfo } from './lib/sysinfo.js';

interface Options {
  readonly agents: number[];
  readonly changes: number;
  /** Git revision of the unsigned baseline, or 'none'. */
  readonly baseline: string;
  /** Keep the work directory (graphs, state dirs, agent logs) instead of deleting it, and say where it is. */
  readonly keep: boolean;
  /** --log-level for every agent (their logs are in the work directory). */
  readonly logLevel: string;
  /** Start agents with --cpu-prof, the profiles written into this directory (profile-<variant>-<host>.cpuprofile). */
  readonly prof: string | undefined;
  /** Which agents --prof profiles: only the N-th (the one that joins last), all, or these hosts (--prof-hosts h01,h02). */
  readonly profAll: boolean;
  readonly profHosts: readonly string[];
  /** --prof-interval US: the profiles' sampling interval (Node's default is 1000 us, too coarse for a 20 ms change). */
  readonly profIntervalUs: number | undefined;
  /** The CLI the signed agents run (default: this checkout's bin/backplane.js), to measure another build. */
  readonly bin: string;
  /** Another build, run as variant `alt` interleaved with `signed` (an A/B on a machine whose load changes). */
  readonly altBin: string | undefined;
  /** Each size and variant this many times, interleaved. */
  readonly repeat: number;
  /** Limits for sizes of 30 agents and more (see LIMITS_30): a figure past one fails the run. */
  readonly limits: { readonly changeMedianMs: number; readonly changeMaxMs: number; readonly joinMs: number; readonly idleMsPerS: number };
}

/**
 * Regression limits with 30 agents or more, from the figures of 2026-12-02 evening (21:50-22:50, after a re-render
 * for one changed export stopped validating the whole graph) on this 2-core machine, with headroom for its noise:
 * on a quiet machine the change median was 0.67-0.80 s, the slowest change 0.93-1.07 s, the join 1.7-2.3 s and an
 * idle agent 4.4-6.5 ms of CPU a second; while other sessions loaded it (load average 20-50) the build before gave a
 * median of 1.48 s, a slowest change of 1.87 s, a join of 2.81 s and 11.8 ms a second. An idle agent's CPU is held
 * too: every agent's idle cost is paid by every change on a machine of 30. Override with --max-change-median-ms,
 * --max-change-ms, --max-join-ms, --max-idle-ms (per agent per second).
 */
const LIMITS_30 = { changeMedianMs: 1700, changeMaxMs: 2800, joinMs: 4000, idleMsPerS: 15 };

/** The last commit before host identity: exports and membership unsigned, collected exports unverified. */
const UNSIGNED_BASELINE = 'e27cab1';

interface Variant {
  readonly name: 'signed' | 'unsigned' | 'alt';
  readonly bin: string;
  readonly trust: boolean;
}

function parseArgs(argv: readonly string[]): Options {
  const value = (name: string): string | undefined => {
    const i = argv.indexOf(`--${name}`);
    return i === -1 ? undefined : argv[i + 1];
  };
  if (argv.includes('--help')) {
    process.stdout.write(
      'usage: node --import tsx bench/cluster.ts [--agents 3,10,30] [--changes 20] [--baseline REV|none] [--keep] [--log-level debug] [--prof DIR [--prof-all | --prof-hosts h01,h02] [--prof-interval US]] [--bin PATH] [--alt-bin PATH] [--repeat K] [--max-change-median-ms MS] [--max-change-ms MS] [--max-join-ms MS] [--max-idle-ms MS]\n',
    );
    process.exit(0);
  }
  const agents = (value('agents') ?? '3,10,30').split(',').map((s) => Number(s.trim()));
  if (agents.some((n) => !Number.isInteger(n) || n < 2 || n > 100)) throw new Error('--agents takes sizes from 2 to 100, e.g. 3,10,30');
  const changes = Number(value('changes') ?? '20');
  if (!Number.isInteger(changes) || changes < 1) throw new Error('--changes takes a positive integer');
  const repeat = Number(value('repeat') ?? '1');
  if (!Number.isInteger(repeat) || repeat < 1) throw new Error('--repeat takes a positive integer');
  return {
    agents,
    changes,
    baseline: value('baseline') ?? UNSIGNED_BASELINE,
    keep: argv.includes('--keep'),
    logLevel: value('log-level') ?? 'info',
    prof: value('prof'),
    profAll: argv.includes('--prof-all'),
    profHosts: (value('prof-hosts') ?? '').split(',').filter((h) => h !== ''),
    profIntervalUs: value('prof-interval') === undefined ? undefined : Number(value('prof-interval')),
    bin: value('bin') ?? BIN,
    altBin: value('alt-bin'),
    limits: {
      changeMedianMs: Number(value('max-change-median-ms') ?? LIMITS_30.changeMedianMs),
      changeMaxMs: Number(value('max-change-ms') ?? LIMITS_30.changeMaxMs),
      joinMs: Number(value('max-join-ms') ?? LIMITS_30.joinMs),
      idleMsPerS: Number(value('max-idle-ms') ?? LIMITS_30.idleMsPerS),
    },
    repeat: Number(value('repeat') ?? '1'),
  };
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
  readonly variant: Variant['name'];
  readonly agents: number;
  /** N-1 agents spawned back to back: ms from the last spawn until all of them converged. */
  readonly stormMs: number;
  /** The N-th agent: ms from its spawn until all N converged. */
  readonly joinMs: number;
  /** Until every other host has a change (samplesMs, median, p99, max), and until the first one has it (firstMedianMs). */
  readonly change: {
    readonly samplesMs: number[];
    readonly medianMs: number;
    readonly p99Ms: number;
    readonly maxMs: number;
    readonly firstMedianMs: number;
    /** From the moment the exported value reached etcd until every other host applied it. */
    readonly fromStoreMedianMs: number;
    readonly fromStoreP99Ms: number;
    /** From the graph edit until the exporter's new value reached etcd: the exporter's own part (read, render, publish). */
    readonly toStoreMedianMs: number;
  };
  /** Puts and deletes in the store per change (idle time between changes included), by the key's first segment. */
  readonly storeWritesPerChange: Readonly<Record<string, number>>;
  readonly kill9RemovalMs: number;
  readonly leaveRemovalMs: number;
  /** Resident memory per agent once converged (median, MiB). */
  readonly rssMiB: number;
  /**
   * CPU time (user + system) the agents used, which a loaded machine stretches far less than wall time: per agent
   * until the storm converged (median), of the N-th agent until all converged, of all the others while it joined
   * (their sum), and of all agents together per change.
   */
  readonly cpuMs: {
    readonly stormPerAgent: number;
    readonly joiner: number;
    readonly othersDuringJoin: number;
    readonly allPerChange: number;
    /**
     * Per change, idle time until the next one included: the exporter's CPU and one collector's (means: /proc counts
     * in 10 ms ticks, so a median of per-change figures would only ever be a multiple of 10), and a collector's p90.
     */
    readonly exporterPerChange: number;
    readonly collectorPerChange: number;
    readonly collectorPerChangeP90: number;
    /** This bench process's own CPU per change (its watch of the agents' directories and the files it reads). */
    readonly benchPerChange: number;
    /** Per agent per second while nothing changes. */
    readonly idlePerAgentPerS: number;
  };
}

const CONVERGE_TIMEOUT_MS = 120_000;
/** How long the agents are watched doing nothing, for their idle CPU. */
const IDLE_MS = 3000;
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

/**
 * The agents' environment: this one without NODE_EXTRA_CA_CERTS. The sandbox sets it, and Node then parses every
 * system certificate before any JavaScript runs (~40 ms a process here); an agent host has no reason to set it, and
 * 30 agents starting at once would pay it 30 times over on 2 cores.
 */
function agentEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env['NODE_EXTRA_CA_CERTS'];
  return env;
}

function spawnAgent(a: Agent, endpoints: readonly string[], cluster: string, work: string, v: Variant, opts: Options, prof = false): void {
  const fd = openSync(a.log, 'a');
  // In the agent's own time format, so its log reads as a timeline from the spawn.
  writeSync(fd, `${new Date().toISOString().slice(11, 23)} bench: spawning ${a.host}\n`);
  const join_ = v.trust && a.host !== CA_HOST ? ['--join-token-file', join(work, 'join-token')] : [];
  const node =
    opts.prof !== undefined && (prof || opts.profAll || opts.profHosts.includes(a.host)) ? [
          '--cpu-prof',
          '--cpu-prof-dir',
          opts.prof,
          '--cpu-prof-name',
          `profile-${v.name}-${a.host}.cpuprofile`,
          ...(opts.profIntervalUs === undefined ? [] : ['--cpu-prof-interval', String(opts.profIntervalUs)]),
        ]
      : [];
  const proc = spawn(
    process.execPath,
    [
      ...node,
      v.bin,
      'run',
      '--file',
      a.graph,
      '--hostname',
      a.host,
      '--etcd',
      endpoints.join(','),
      '--cluster',
      cluster,
      '--state-dir',
      join(work, 'state', a.host),
      '--log-level',
      opts.logLevel,
      ...join_,
    ],
    { cwd: ROOT, stdio: ['ignore', fd, fd], env: agentEnv() },
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

/**
 * Leader changes the etcd members have seen so far (the most any member counted): elections mean a starved cluster,
 * and every one stalls writes for a moment.
 */
async function leaderChanges(etcd: EtcdCluster): Promise<number> {
  const counts = await Promise.all(
    etcd.members.map(async (m) => {
      try {
        const text = await (await fetch(`${m.clientUrl}/metrics`, { signal: AbortSignal.timeout(2000) })).text();
        return Number(/^etcd_server_leader_changes_seen_total (\S+)$/m.exec(text)?.[1] ?? 0);
      } catch {
        return 0;
      }
    }),
  );
  return Math.max(...counts);
}

/** CPU time (user + system) the process has used so far, in ms (undefined once it is gone). */
function cpuMs(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    // Fields after the command (which may hold spaces, hence from the last ')'): utime and stime are the 12th and 13th.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return undefined;
  }
}

/** USER_HZ: 100 on every Linux this runs on; getconf says for sure. */
const CLOCK_TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

function cpuOf(agents: readonly Agent[]): number[] {
  return agents.map((a) => cpuMs(a.proc?.pid)).filter((v): v is number => v !== undefined);
}

function sum(xs: readonly number[]): number {
  return xs.reduce((a, b) => a + b, 0);
}

function mean(xs: readonly number[]): number {
  return xs.length === 0 ? NaN : sum(xs) / xs.length;
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
 * time from `t0` at which the last of them first passed. An event in a host's directory has that host checked at
 * once; only a poll (a backstop for a missed event) checks them all. Checking every pending host on every event
 * read ~30 files per event, thousands per change with 30 agents: CPU the agents it measures needed.
 */
class Observer {
  private readonly watchers: FSWatcher[] = [];
  private kick: (() => void) | undefined;
  /** Hosts with an event since they were last checked. */
  private readonly dirty = new Set<Agent>();

  constructor(agents: readonly Agent[]) {
    for (const a of agents) {
      mkdirSync(join(a.dir, 'collected'), { recursive: true });
      this.watchers.push(
        watch(join(a.dir, 'collected'), () => {
          this.dirty.add(a);
          this.kick?.();
        }),
      );
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
    let all = true;
    let polledAt = performance.now();
    while (pending.size > 0) {
      if (performance.now() - t0 > timeoutMs) {
        const names = [...pending].map((a) => a.host);
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} on ${names.slice(0, 5).join(', ')}${names.length > 5 ? ` and ${names.length - 5} more` : ''}`);
      }
      const woke = new Promise<void>((resolve) => (this.kick = resolve));
      const due = all ? [...pending] : [...pending].filter((a) => this.dirty.has(a));
      for (const a of due) this.dirty.delete(a);
      for (const a of due) {
        if (await check(a)) {
          pending.delete(a);
          last = performance.now() - t0;
          first ??= last;
        }
      }
      if (pending.size === 0) break;
      // At least 5 ms apart: while files are landing, events would otherwise keep the checker spinning on CPU
      // that the agents need. Woken early by an event; every POLL_MS, everyone is checked.
      const left = POLL_MS - (performance.now() - polledAt);
      if (left > 0 && ![...pending].some((a) => this.dirty.has(a))) await Promise.race([woke, sleep(left)]);
      await sleep(5);
      all = performance.now() - polledAt >= POLL_MS;
      if (all) polledAt = performance.now();
    }
    this.kick = undefined;
    return { first: first ?? last, last };
  }

  close(): void {
    for (const w of this.watchers) w.close();
  }
}

/** How often the observer checks every pending host whatever the events say (a net for a missed inotify event). */
const POLL_MS = 200;

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

/** `exporter`'s two files with their current content. */
async function holdsCurrent(a: Agent, exporter: Agent): Promise<boolean> {
  for (const i of [1, 2] as const) {
    const got = await readFile(join(a.dir, 'collected', `${exporter.host}-exported-${i}`), 'utf8').catch(() => undefined);
    if (got !== expectedContent(exporter, i)) return false;
  }
  return true;
}

async function holdsNoneOf(a: Agent, gone: Agent): Promise<boolean> {
  const names = await readdir(join(a.dir, 'collected')).catch(() => [] as string[]);
  return !names.some((n) => n.startsWith(`${gone.host}-`));
}

const CA_HOST = 'h00';

/** Host h00 creates the cluster's CA and a token the other n-1 hosts join with (what an operator does once). */
function initTrust(bin: string, n: number, endpoints: readonly string[], cluster: string, work: string): void {
  const common = ['--etcd', endpoints.join(','), '--cluster', cluster, '--state-dir', join(work, 'state', CA_HOST)];
  const init = spawnSync(process.execPath, [bin, 'cluster', 'init', ...common, '--hostname', CA_HOST], { encoding: 'utf8' });
  if (init.status !== 0) throw new Error(`cluster init failed: ${init.stderr}`);
  const token = spawnSync(process.execPath, [bin, 'hosts', 'token', ...common, '--uses', String(n)], { encoding: 'utf8' });
  if (token.status !== 0) throw new Error(`hosts token failed: ${token.stderr}`);
  writeFileSync(join(work, 'join-token'), token.stdout, { mode: 0o600 });
}

async function measureSize(n: number, opts: Options, etcd: EtcdCluster, root: string, v: Variant, run: number): Promise<SizeResult> {
  // A cluster of its own per run: trust/ and the hosts list of an earlier run stay in the store.
  const work = join(root, `n${n}-${v.name}-${run}`);
  const cluster = `bench-${n}-${v.name}-${run}`;
  const agents: Agent[] = [];
  // The logs in a directory of their own: each agent watches its graph file's directory, and with every agent's log
  // beside the graphs, each agent woke for every line any of the N agents wrote (~3N per change: an inotify event
  // and a callback each, on every agent), a cost of N agents sharing one directory that no host pays.
  mkdirSync(join(work, 'logs'), { recursive: true });
  for (let i = 0; i < n; i++) {
    const host = `h${String(i).padStart(2, '0')}`;
    const a: Agent = { host, dir: join(work, host), graph: join(work, `${host}.yaml`), log: join(work, 'logs', `${host}.log`), version: 0, proc: undefined };
    mkdirSync(a.dir, { recursive: true });
    writeGraph(a);
    agents.push(a);
  }
  const observer = new Observer(agents);
  if (v.trust) initTrust(v.bin, n, etcd.endpoints, cluster, work);
  try {
    const first = agents.slice(0, n - 1);
    const lastAgent = agents[n - 1];
    if (lastAgent === undefined) throw new Error('no agents');
    const elections0 = await leaderChanges(etcd);
    for (const a of first) spawnAgent(a, etcd.endpoints, cluster, work, v, opts);
    const stormT0 = performance.now();
    const stormMs = await observer.until('the first agents to converge', first, (a) => holdsExactly(a, first), stormT0, CONVERGE_TIMEOUT_MS);
    const stormCpu = cpuOf(first);
    progress(
      `  ${n - 1} agents converged ${ms(stormMs)} after the last was spawned (CPU per agent: median ${ms(median(stormCpu) ?? NaN)}; etcd leader changes: ${(await leaderChanges(etcd)) - elections0})`,
    );

    const joinT0 = performance.now();
    spawnAgent(lastAgent, etcd.endpoints, cluster, work, v, opts, true);
    const joinMs = await observer.until('all agents to converge after the last joined', agents, (a) => holdsExactly(a, agents), joinT0, CONVERGE_TIMEOUT_MS);
    const joinerCpu = cpuMs(lastAgent.proc?.pid) ?? NaN;
    const othersDuringJoin = sum(cpuOf(first)) - sum(stormCpu);
    progress(`  agent ${n} joined: all converged ${ms(joinMs)} after it was spawned (CPU: the joiner ${ms(joinerCpu)}, the others together ${ms(othersDuringJoin)})`);
    await sleep(500);
    const rss = agents.map((a) => rssMiB(a.proc?.pid)).filter((v): v is number => v !== undefined);
    // What N agents cost while nothing changes (keep-alives, heartbeats, timers): every change below pays it too.
    const idle0 = sum(cpuOf(agents));
    const idleT0 = performance.now();
    await sleep(IDLE_MS);
    const idlePerAgent = (sum(cpuOf(agents)) - idle0) / ((performance.now() - idleT0) / 1000) / n;
    progress(`  idle: ${idlePerAgent.toFixed(1)} ms of CPU per agent per second`);

    const changesCpu0 = sum(cpuOf(agents));
    const benchCpu0 = process.cpuUsage();
    const samples: number[] = [];
    const firsts: number[] = [];
    const fromStore: number[] = [];
    const toStore: number[] = [];
    // Per change: the exporter's CPU and each collector's, from its edit until the next one (the idle time between
    // changes is in both): which side a change costs what.
    const exporterCpu: number[] = [];
    const collectorCpu: number[] = [];
    // When each exported value reached etcd: the propagation after it (sign, store, watch, verify, collect, apply)
    // is what host identity changes; the exporter's own handling of its graph edit comes before it.
    const stored = new Map<string, number>();
    // The probe watches the whole cluster, not only exported/: a write that every agent makes after applying a
    // change (a status, a heartbeat) would be N writes per change that every watcher of it hears, N² in all.
    const writes = new Map<string, number>();
    const probe = new EtcdStore({ endpoints: etcd.endpoints, cluster });
    const probeAc = new AbortController();
    await probe.watch(
      '',
      0,
      (batch) => {
        const now = performance.now();
        if (batch.type !== 'events') return;
        for (const e of batch.events) {
          const top = (e.type === 'put' ? e.kv.key : e.key).split('/')[0] ?? '';
          writes.set(top, (writes.get(top) ?? 0) + 1);
          if (e.type !== 'put') continue;
          const m = /e1 from (h\d+) v(\d+)/.exec(e.kv.value);
          if (m !== null && !stored.has(`${m[1]} v${m[2]}`)) stored.set(`${m[1]} v${m[2]}`, now);
        }
      },
      probeAc.signal,
    );
    for (let k = 0; k < opts.changes; k++) {
      const exporter = agents[k % n];
      if (exporter === undefined) continue;
      exporter.version++;
      const others = agents.filter((a) => a !== exporter);
      const want = expectedContent(exporter, 1);
      const file = (a: Agent): string => join(a.dir, 'collected', `${exporter.host}-exported-1`);
      const cpu0 = agents.map((a) => cpuMs(a.proc?.pid));
      const t0 = performance.now();
      writeGraph(exporter);
      const seen = await observer.untilAll(`change ${k + 1} from ${exporter.host}`, others, async (a) => (await readFile(file(a), 'utf8').catch(() => '')) === want, t0, CHANGE_TIMEOUT_MS);
      samples.push(seen.last);
      firsts.push(seen.first);
      const at = stored.get(`${exporter.host} v${exporter.version}`);
      if (at !== undefined) {
        fromStore.push(seen.last - (at - t0));
        toStore.push(at - t0);
      }
      // Let the second file and the exporter's own copy land before the next change (only the exporter's files
      // changed: reading every host's 2N files here was most of this bench's own CPU, taken from the agents).
      await observer.until('the change to settle', agents, (a) => holdsCurrent(a, exporter), t0, CHANGE_TIMEOUT_MS);
      await sleep(100);
      agents.forEach((a, i) => {
        const before = cpu0[i];
        const now = cpuMs(a.proc?.pid);
        if (before === undefined || now === undefined) return;
        (a === exporter ? exporterCpu : collectorCpu).push(now - before);
      });
    }
    const perChangeCpu = (sum(cpuOf(agents)) - changesCpu0) / opts.changes;
    const benchCpu = process.cpuUsage(benchCpu0);
    const benchPerChange = (benchCpu.user + benchCpu.system) / 1000 / opts.changes;
    probeAc.abort();
    await probe.close();
    const storeWritesPerChange = Object.fromEntries([...writes].sort().map(([k, c]) => [k, round(c / opts.changes)]));
    progress(`  store writes per change: ${Object.entries(storeWritesPerChange).map(([k, c]) => `${k}/ ${c}`).join(', ')}`);
    progress(
      `  ${samples.length} changes: on every host after median ${ms(median(samples) ?? NaN)}, max ${ms(Math.max(...samples))}; on the first host after median ${ms(median(firsts) ?? NaN)}; from the store write to every host: median ${ms(median(fromStore) ?? NaN)} (from the edit to the store write: ${ms(median(toStore) ?? NaN)}); CPU of all agents per change ${ms(perChangeCpu)} (the exporter's: mean ${ms(mean(exporterCpu))}; a collector's: mean ${ms(mean(collectorCpu))}, p90 ${ms(percentile(collectorCpu, 90) ?? NaN)}; this bench's own: ${ms(benchPerChange)})`,
    );

    // The N-th agent leaves last, with SIGTERM, so a --prof profile of it gets written.
    const victim = agents[n - 2] as Agent;
    const survivors = agents.filter((a) => a !== victim);
    const killT0 = performance.now();
    await stopAgent(victim, 'SIGKILL');
    const kill9RemovalMs = await observer.until(`${victim.host}'s exports to go after kill -9`, survivors, (a) => holdsNoneOf(a, victim), killT0, CHANGE_TIMEOUT_MS);
    progress(`  kill -9: ${victim.host}'s files gone from the others ${ms(kill9RemovalMs)} later`);

    const leaver = agents[n - 1] as Agent;
    const remaining = agents.slice(0, n - 2);
    const leaveT0 = performance.now();
    const stopped = stopAgent(leaver, 'SIGTERM');
    const leaveRemovalMs =
      remaining.length === 0 ? 0 : await observer.until(`${leaver.host}'s exports to go after SIGTERM`, remaining, (a) => holdsNoneOf(a, leaver), leaveT0, CHANGE_TIMEOUT_MS);
    await stopped;
    progress(`  SIGTERM: ${leaver.host}'s files gone from the others ${ms(leaveRemovalMs)} later`);

    return {
      variant: v.name,
      agents: n,
      stormMs: round(stormMs),
      joinMs: round(joinMs),
      change: {
        samplesMs: samples.map(round),
        medianMs: round(median(samples) ?? NaN),
        p99Ms: round(percentile(samples, 99) ?? NaN),
        maxMs: round(Math.max(...samples)),
        firstMedianMs: round(median(firsts) ?? NaN),
        fromStoreMedianMs: round(median(fromStore) ?? NaN),
        fromStoreP99Ms: round(percentile(fromStore, 99) ?? NaN),
        toStoreMedianMs: round(median(toStore) ?? NaN),
      },
      storeWritesPerChange,
      kill9RemovalMs: round(kill9RemovalMs),
      leaveRemovalMs: round(leaveRemovalMs),
      rssMiB: round(median(rss) ?? NaN),
      cpuMs: { stormPerAgent: round(median(stormCpu) ?? NaN), joiner: round(joinerCpu), othersDuringJoin: round(othersDuringJoin), allPerChange: round(perChangeCpu), exporterPerChange: round(mean(exporterCpu)), collectorPerChange: round(mean(collectorCpu)), collectorPerChangeP90: round(percentile(collectorCpu, 90) ?? NaN), benchPerChange: round(benchPerChange), idlePerAgentPerS: round(idlePerAgent) },
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
    if (opts.keep) progress(`  kept ${work}`);
    else await rm(work, { recursive: true, force: true });
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
  const head = ['agents', 'agents are', 'storm (N-1)', 'join (N-th)', 'change: first host', 'change: all, median', 'p99', 'max', 'from store write: median', 'kill -9 removal', 'SIGTERM removal', 'RSS/agent'];
  const rows = results.map((r) => [
    String(r.agents),
    r.variant,
    ms(r.stormMs),
    ms(r.joinMs),
    ms(r.change.firstMedianMs),
    ms(r.change.medianMs),
    ms(r.change.p99Ms),
    ms(r.change.maxMs),
    ms(r.change.fromStoreMedianMs),
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
    if (baselineDir !== undefined) spawnSync('git', ['worktree', 'remove', '--force', baselineDir], { cwd: ROOT });
    if (!opts.keep) await rm(root, { recursive: true, force: true });
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    progress(`\nbench: interrupted by ${sig}; cleaning up`);
    void cleanUp().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const crypto = signingCost();
  progress(`signing a record: ${crypto.sealUs} µs; verifying one: ${crypto.verifyUs} µs (Ed25519, ${crypto.records} records of ~300 bytes)`);
  const results: SizeResult[] = [];
  const variants: Variant[] = [{ name: 'signed', bin: opts.bin, trust: true }];
  try {
    if (opts.baseline !== 'none') variants.push({ name: 'unsigned', bin: buildBaseline(opts.baseline, root), trust: false });
    etcd = await startEtcd({ members: 3 });
    if (opts.altBin !== undefined) variants.push({ name: 'alt', bin: opts.altBin, trust: true });
    for (const n of opts.agents) {
      for (let run = 0; run < opts.repeat; run++) {
        // Interleaved, and in alternating order, so a machine that gets busier hurts neither side alone.
        const order = (n + run) % 2 === 0 ? variants : [...variants].reverse();
        for (const v of order) {
          progress(`${n} agents, ${v.name}${opts.repeat > 1 ? ` (run ${run + 1} of ${opts.repeat})` : ''}:`);
          results.push(await measureSize(n, opts, etcd, root, v, run));
        }
      }
    }
  } finally {
    await cleanUp();
  }
  const failures: string[] = [];
  for (const r of results) {
    if (r.agents < 30 || r.variant !== 'signed') continue;
    const { changeMedianMs, changeMaxMs, joinMs, idleMsPerS } = opts.limits;
    if (!(r.change.medianMs <= changeMedianMs)) failures.push(`${r.agents} agents: a change reached every host after a median of ${ms(r.change.medianMs)} (limit ${ms(changeMedianMs)})`);
    if (!(r.change.maxMs <= changeMaxMs)) failures.push(`${r.agents} agents: a change took ${ms(r.change.maxMs)} to reach every host (limit ${ms(changeMaxMs)})`);
    if (!(r.joinMs <= joinMs)) failures.push(`${r.agents} agents: the last agent joined and all converged after ${ms(r.joinMs)} (limit ${ms(joinMs)})`);
    if (!(r.cpuMs.idlePerAgentPerS <= idleMsPerS)) failures.push(`${r.agents} agents: an idle agent used ${r.cpuMs.idlePerAgentPerS} ms of CPU a second (limit ${idleMsPerS} ms)`);
  }
  for (const n of opts.agents) {
    const signed = results.find((r) => r.agents === n && r.variant === 'signed');
    const unsigned = results.find((r) => r.agents === n && r.variant === 'unsigned');
    if (signed === undefined || unsigned === undefined) continue;
    // Compared from the store write: the baseline commit also predates #8's wait for a complete graph file (100 ms
    // of quiet after an edit), which is not what signing costs.
    const ratio = signed.change.fromStoreMedianMs / unsigned.change.fromStoreMedianMs;
    progress(
      `${n} agents: signed/unsigned change median from the store write ${ratio.toFixed(2)}x (${ms(signed.change.fromStoreMedianMs)} vs ${ms(unsigned.change.fromStoreMedianMs)}); from the graph edit ${ms(signed.change.medianMs)} vs ${ms(unsigned.change.medianMs)}`,
    );
    if (!(signed.change.fromStoreMedianMs <= unsigned.change.fromStoreMedianMs * 1.5 + 30)) failures.push(`${n} agents: signing makes export propagation ${ratio.toFixed(2)}x slower`);
  }

  const out = {
    date: new Date().toISOString(),
    machine: machineInfo(),
    etcd: { members: 3, version: etcdVersion(), heartbeatMs: 25, electionMs: 250 },
    leaseTtlMs: 3000,
    changesPerSize: opts.changes,
    signing: crypto,
    results,
    notes: [
      'storm: N-1 agents spawned back to back, ms from the last spawn until every one holds all 2(N-1) exports; mostly Node start-up on a 2-core machine.',
      'join: ms from spawning the N-th agent until all N hold all 2N exports (includes its start-up and first etcd round trip).',
      'from store write: ms from the moment the changed export reached etcd until every other host applied it (what signing and verifying change; the graph-edit figure also holds the exporter\'s own 100 ms wait for a complete graph file, which the unsigned baseline predates).',
      'change: ms from writing the exporter\'s graph file until every other host has the new content of the collected file (with --changes 20 or fewer, p99 is the maximum); "first host": until the quickest collector has it. Includes the 50 ms debounce of the graph file reload on the exporter (collectors re-render after 2 ms). All agents share 2 cores, so with N agents the last host waits for N-1 re-renders; on separate machines each host would be about as fast as the first.',
      'kill -9 removal is bounded by the lease TTL (3 s); SIGTERM revokes the lease at once.',
      'cpuMs: CPU time (user + system, from /proc) of the agents: per agent until the storm converged (median), of the N-th agent until all converged, of the others together meanwhile, of all agents per change (idle time between changes included), and per agent per second over 3 s of doing nothing; benchPerChange: this bench process itself per change (it shares the cores with the agents).',
      `signed: this commit (host h00 holds the CA, the others join with a token; records signed, exports verified). unsigned: the agents of ${opts.baseline}, the last commit before host identity, built from git.`,
    ],
  };
  process.stdout.write(`\n${table(results)}\n\n`);
  const file = join(ROOT, 'bench', 'results', 'cluster-latest.json');
  writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
  process.stdout.write(`${JSON.stringify(out)}\n`);
  progress(`written to ${file}`);
  if (failures.length > 0) {
    progress(`FAIL: ${failures.join('; ')}`);
    process.exitCode = 1;
  }
}

/**
 * Builds the CLI of an older commit in a temporary git worktree (sharing this checkout's node_modules), so both
 * variants run on the same machine in the same minutes. Returns the path of its bin/backplane.js.
 */
function buildBaseline(rev: string, root: string): string {
  const dir = join(root, 'baseline');
  const git = (...args: string[]): void => {
    const r = spawnSync('git', args, { cwd: ROOT, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`git ${args.join(' ')} failed: ${r.stderr}`);
  };
  progress(`building the unsigned baseline (${rev}) in ${dir}`);
  git('worktree', 'add', '--detach', dir, rev);
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
  const b = spawnSync(process.execPath, [join(dir, 'scripts', 'build.mjs')], { cwd: dir, encoding: 'utf8' });
  if (b.status !== 0) throw new Error(`building ${rev} failed: ${b.stderr}`);
  baselineDir = dir;
  return join(dir, 'bin', 'backplane.js');
}

let baselineDir: string | undefined;

/** The CPU cost of host identity per record, without the store: what every export and every collector pays. */
function signingCost(): { records: number; sealUs: number; verifyUs: number } {
  const ca = generateKeyPair();
  const host = generateKeyPair();
  const view = new TrustView(ca.publicKey);
  view.adopt(sealHosts(ca, withHost({ serial: 0, issuedAt: '', hosts: {} }, 'h01', { publicKey: host.publicKey, state: 'approved', since: '' })));
  const body = JSON.stringify({ kind: 'file', name: '/srv/bench/exported-1', params: { content: 'x'.repeat(200) }, to: '*' });
  const records = 10_000;
  const sealed: string[] = [];
  let t0 = performance.now();
  for (let i = 0; i < records; i++) sealed.push(sealRecord(host, `exported/h01/file/${i}`, i, body));
  const sealUs = ((performance.now() - t0) / records) * 1000;
  t0 = performance.now();
  for (let i = 0; i < records; i++) if (!view.verify('h01', `exported/h01/file/${i}`, sealed[i] ?? '').ok) throw new Error('a sealed record did not verify');
  const verifyUs = ((performance.now() - t0) / records) * 1000;
  return { records, sealUs: round(sealUs), verifyUs: round(verifyUs) };
}

function etcdVersion(): string {
  const out = spawnSync('etcd', ['--version'], { encoding: 'utf8' }).stdout ?? '';
  return /etcd Version: (\S+)/.exec(out)?.[1] ?? 'unknown';
}

main().catch((err: unknown) => {
  process.stderr.write(`bench/cluster: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
