/**
 * The scale benchmark (`npm run bench -- scale`): Backplane alone with 1,000, 10,000 and 100,000 `noop` and `file`
 * resources, each size next to the empty graph, for `validate`, a cold one-shot run, a converged one-shot run, the
 * first change applied, and an agent left running (until "converged", its memory and CPU while idle, SIGTERM). The
 * figures are printed per resource with the empty graph's subtracted (bench/lib/scale.ts says how), with each
 * size's ratio to the smallest, and checked against the issue's bounds: exit 1 and `FAIL:` lines past them.
 *
 * Every process runs in the lowest-load setting the bench can give it: without NODE_EXTRA_CA_CERTS (benchEnv), with
 * `--no-api` and a fresh `--state-dir` in the bench's temp dir for every run.
 */
import { watch, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync, type FSWatcher } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { startAgent, stopAgent, type Agent } from './live/agent.js';
import { COMPACTED, QUIET_MS } from '../src/agent/idle-compaction.js';
import { measureIdle, waitQuiet } from './live/idle.js';
import { loadavg } from './lib/cluster-bench.js';
import { emptyDir, hasContent, makeFiles, verifyFiles, writeConverged } from './lib/fileset.js';
import { droppedEnv, envNote, killAllChildren, spawnTimed, tail } from './lib/proc.js';
import { fmtSeconds } from './lib/report.js';
import {
  AGENT_QUIET_SHARE,
  checkScale,
  type ScaleCheck,
  renderScaleMarkdown,
  renderScaleText,
  SCALE_KINDS,
  shortSize,
  type MetricId,
  type ScaleKind,
  type ScalePoint,
  type ScaleResults,
  type ScaleRun,
  type ScaleStat,
} from './lib/scale.js';
import { machineInfo } from './lib/sysinfo.js';
import { BACKPLANE_BIN, backplaneBuilt, REPO_ROOT } from './tools/backplane.js';
import type { FileSpec } from './tools/types.js';

const RESULTS_DIR = join(REPO_ROOT, 'bench', 'results');

const USAGE = `usage: npm run bench -- scale [options]
  --sizes LIST       resource counts (default 1000,10000,100000); the empty graph is always measured too
  --kinds LIST       comma-separated subset of ${SCALE_KINDS.join(',')} (default: both)
  --runs N           runs of each size up to 10,000 resources and of the empty graph (default 3); see --stat
  --big-runs N       runs of each size above 10,000 (default 1: a 100,000-file run takes minutes)
  --timeout S        give up on one run after S seconds, reported as a failure (default 60 + 4 ms per resource)
  --idle-window S    seconds the idle agent's CPU is measured over (default 5)
  --stat min|median  each size's figure from its runs: the fastest / least memory (default), or the median
  --keep             keep the temporary directory (graphs, logs, targets) and print its path
  --from FILE        measure nothing: print and check the results of an earlier run (a scale-*.json), with --stat
                     if given, against today's SCALE_BOUNDS`;

interface Options {
  readonly sizes: readonly number[];
  readonly kinds: readonly ScaleKind[];
  readonly runs: number;
  readonly bigRuns: number;
  readonly timeoutS: number | undefined;
  readonly idleWindowS: number;
  /** Undefined: the default (min), which --from leaves as the file has it. */
  readonly stat: ScaleStat | undefined;
  readonly keep: boolean;
  readonly from: string | undefined;
}

/** Above this many resources a size gets --big-runs rather than --runs. */
const BIG = 10_000;

function int(value: string | undefined, fallback: number, name: string, min: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} wants an integer >= ${min}, got ${JSON.stringify(value)}`);
  return n;
}

function statOption(value: string | undefined): ScaleStat | undefined {
  if (value === undefined || value === 'min') return value;
  if (value === 'median') return 'median';
  throw new Error(`--stat wants min or median, got ${JSON.stringify(value)}`);
}

function parseOptions(argv: readonly string[]): Options | undefined {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      sizes: { type: 'string' },
      kinds: { type: 'string' },
      runs: { type: 'string' },
      'big-runs': { type: 'string' },
      timeout: { type: 'string' },
      'idle-window': { type: 'string' },
      stat: { type: 'string' },
      from: { type: 'string' },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    console.log(USAGE);
    return undefined;
  }
  const sizes = (values.sizes ?? '1000,10000,100000').split(',').map((s) => int(s.trim(), 0, 'sizes', 1));
  const kinds = (values.kinds ?? SCALE_KINDS.join(',')).split(',').map((k) => {
    const kind = SCALE_KINDS.find((x) => x === k.trim());
    if (kind === undefined) throw new Error(`unknown kind ${JSON.stringify(k)}; known: ${SCALE_KINDS.join(', ')}`);
    return kind;
  });
  return {
    sizes: [...new Set(sizes)].sort((a, b) => a - b),
    kinds: [...new Set(kinds)],
    runs: int(values.runs, 3, 'runs', 1),
    bigRuns: int(values['big-runs'], 1, 'big-runs', 1),
    timeoutS: values.timeout === undefined ? undefined : int(values.timeout, 0, 'timeout', 1),
    idleWindowS: int(values['idle-window'], 5, 'idle-window', 1),
    stat: statOption(values.stat),
    keep: values.keep,
    from: values.from,
  };
}

/** One (kind, size): its graph, written once, and the files it manages. */
interface Case {
  readonly kind: ScaleKind;
  readonly size: number;
  readonly base: string;
  readonly graph: string;
  /** The file kind's target directory (a resource itself); undefined for noop. */
  readonly dir: string | undefined;
  readonly files: FileSpec[];
  /** Vertices in the graph, as the agent counts them in "converged: X of N resources". */
  readonly vertices: number;
}

/**
 * The graph as bench/tools/backplane.ts writes it (a directory resource, then files of mode 0644 with small distinct
 * content from fileset.ts), but written line by line: the yaml library takes ~20 s to stringify 100,000 resources.
 * JSON strings are valid YAML double-quoted scalars.
 */
function graphText(kind: ScaleKind, size: number, dir: string, files: readonly FileSpec[]): string {
  if (size === 0 && kind === 'noop') return 'resources: []\n';
  const lines = ['resources:'];
  if (kind === 'file') {
    lines.push(`  - kind: file\n    name: ${JSON.stringify(dir)}\n    type: directory`);
    for (const f of files) lines.push(`  - kind: file\n    name: ${JSON.stringify(f.path)}\n    content: ${JSON.stringify(f.content)}\n    mode: "0644"`);
  } else {
    for (let i = 1; i <= size; i++) lines.push(`  - kind: noop\n    name: n${i}`);
  }
  return lines.join('\n') + '\n';
}

function makeCase(tmp: string, kind: ScaleKind, size: number): Case {
  const base = join(tmp, kind, String(size));
  mkdirSync(base, { recursive: true });
  const dir = join(base, 'target');
  const files = kind === 'file' ? makeFiles(dir, size) : [];
  const graph = join(base, 'graph.yaml');
  writeFileSync(graph, graphText(kind, size, dir, files));
  return { kind, size, base, graph, dir: kind === 'file' ? dir : undefined, files, vertices: kind === 'file' ? size + 1 : size };
}

function timeoutMs(c: Case, opts: Options): number {
  return (opts.timeoutS ?? 60 + 0.004 * c.size) * 1000;
}

/** A fresh state dir per run: every run starts from the same (empty) agent state. */
function freshStateDir(c: Case): string {
  const dir = join(c.base, 'state');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * Watches the target directory for the first managed file that is in place with its content, and closes the
 * watch at once, so the bench's own event handling costs the measured run nothing after that. Returns the time of
 * that event (performance.now()) through `first()`.
 */
function watchFirstFile(c: Case): { first(): number | undefined; close(): void } {
  if (c.dir === undefined || c.files.length === 0) return { first: () => undefined, close: () => undefined };
  const byName = new Map(c.files.map((f) => [basename(f.path), f]));
  let at: number | undefined;
  let watcher: FSWatcher | undefined;
  const close = (): void => {
    watcher?.close();
    watcher = undefined;
  };
  watcher = watch(c.dir, (_event, name) => {
    const now = performance.now();
    const f = name === null ? undefined : byName.get(name);
    if (at !== undefined || f === undefined || !hasContent(f.path, f.content)) return;
    at = now;
    close();
  });
  return { first: () => at, close };
}

/** The one-shot run's log must say it converged every vertex: a run that skipped work must not look fast. */
function convergedProblem(log: string, c: Case): string | undefined {
  const text = tail(log, 400);
  const m = /\bconverged: (\d+) of (\d+) resources\b/.exec(text);
  if (m === null) return `no "converged: N of N resources" line; log ${log}:\n${tail(log, 5)}`;
  if (Number(m[1]) !== c.vertices || Number(m[2]) !== c.vertices) return `converged ${m[1]} of ${m[2]}, expected ${c.vertices} of ${c.vertices}`;
  return undefined;
}

function endStateProblem(c: Case): string | undefined {
  return c.dir === undefined ? undefined : verifyFiles(c.dir, c.files);
}

interface Measured {
  values: Partial<Record<MetricId, number>>;
  problems: string[];
}

async function measureValidate(c: Case, opts: Options, run: number, out: Measured): Promise<void> {
  const log = join(c.base, `validate-${run}.log`);
  const argv = [process.execPath, BACKPLANE_BIN, 'validate', '--file', c.graph];
  const r = await spawnTimed({ argv, okCodes: [0] }, log, timeoutMs(c, opts)).done;
  if (r.timedOut) out.problems.push(`validate timed out after ${fmtSeconds(r.wallS)}`);
  else if (r.exitCode !== 0) out.problems.push(`validate exited ${r.exitCode ?? r.signal}; log ${log}:\n${tail(log, 5)}`);
  else {
    out.values['validate.wall'] = r.wallS;
    if (r.maxRssKiB !== undefined) out.values['validate.rss'] = r.maxRssKiB;
  }
}

/**
 * `run --converged-timeout 0`, from an empty target directory (cold) or with every file in place (converged); 'hit' is
 * the cold run again with the state dir the cold run left, whose validated-graph cache then holds this graph.
 */
async function measureOneShot(c: Case, mode: 'cold' | 'hit' | 'converged', opts: Options, run: number, out: Measured): Promise<void> {
  if (c.dir !== undefined) {
    if (mode === 'converged') writeConverged(c.dir, c.files);
    else emptyDir(c.dir);
  }
  const state = mode === 'hit' ? join(c.base, 'state') : freshStateDir(c);
  // Graphs under 4 KiB (the empty ones) are never cached: theirs is a cold run again, as a hit would not help them.
  if (mode === 'hit' && statSync(c.graph).size >= 4096 && !hasEntry(state)) {
    out.problems.push('hit run: the cold run left no graph cache entry');
    return;
  }
  const log = join(c.base, `${mode}-${run}.log`);
  const argv = [process.execPath, BACKPLANE_BIN, 'run', '--file', c.graph, '--converged-timeout', '0', '--no-api', '--state-dir', state];
  const watcher = mode === 'converged' ? undefined : watchFirstFile(c);
  try {
    const t = spawnTimed({ argv, okCodes: [0] }, log, timeoutMs(c, opts));
    const r = await t.done;
    const problem = r.timedOut
      ? `timed out after ${fmtSeconds(r.wallS)}`
      : r.exitCode !== 0
        ? `exit ${r.exitCode ?? r.signal}; log ${log}:\n${tail(log, 5)}`
        : (convergedProblem(log, c) ?? endStateProblem(c));
    if (problem !== undefined) {
      out.problems.push(`${mode} run: ${problem}`);
      return;
    }
    out.values[`${mode}.wall`] = r.wallS;
    if (r.maxRssKiB !== undefined) out.values[`${mode}.rss`] = r.maxRssKiB;
    const first = watcher?.first();
    if (c.files.length > 0 && mode !== 'converged') {
      if (first === undefined) out.problems.push(`${mode} run: the watch saw no managed file appear`);
      else out.values[`${mode}.first`] = (first - t.startedAt) / 1000;
    }
  } finally {
    watcher?.close();
  }
}

function hasEntry(state: string): boolean {
  try {
    return readdirSync(join(state, 'graph-cache')).some((f) => f.endsWith('.json'));
  } catch {
    return false;
  }
}

/** The longest the agent is given to be quiet (AGENT_QUIET_SHARE) after "converged" before its idle window starts. */
const QUIET_MAX_S = 30;

/**
 * An agent whose RSS is below this is not expected to compact its heap (the empty graph's is 52-62 MiB and compacts
 * nothing: its heap stays under the compaction's 16 MiB headroom). 1,000 files (~70 MiB) do compact, 16 s after
 * converging: not waiting for that put the 165 ms pause inside their idle window (3% CPU, 2026-12-02).
 */
const COMPACT_EXPECTED_KIB = 64 * 1024;

/**
 * An agent compacts its heap once it has been idle for a while after converging (src/agent/idle-compaction.ts): what
 * it holds from then on is what a host pays, so the idle window starts after that. The compaction is reported with a
 * log line; a small agent has nothing to compact and says nothing, so the line is waited for only from an agent of
 * some size, and for at most two quiet periods (one more when the loop was busy right after converging) and the pause.
 */
async function waitCompacted(agent: Agent): Promise<void> {
  const seen = (): boolean => agent.recent.some((l) => l.includes(COMPACTED));
  const converged = agent.convergedAt ?? performance.now();
  await sleep(Math.max(0, converged + QUIET_MS + 1000 - performance.now()));
  if (!seen() && rssKiB(agent.pid) >= COMPACT_EXPECTED_KIB) {
    const deadline = converged + 2 * QUIET_MS + QUIET_MAX_S * 1000;
    while (!seen() && performance.now() < deadline && agent.child.exitCode === null) await sleep(100);
  }
  await waitQuiet(agent.pid, AGENT_QUIET_SHARE, QUIET_MAX_S);
}

function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m?.[1] === undefined ? 0 : Number(m[1]);
}

/**
 * An agent as it runs on a host (no --converged-timeout), started cold: time until it logs "converged", then until
 * it is quiet (what it does after converging: the cluster store, garbage collection; at 100,000 resources that is
 * seconds), then the idle window over which its CPU is counted; its RSS at the end of the window, its peak RSS, and
 * how long SIGTERM takes.
 */
async function measureAgent(c: Case, opts: Options, out: Measured): Promise<void> {
  if (c.dir !== undefined) emptyDir(c.dir);
  const state = freshStateDir(c);
  const watcher = watchFirstFile(c);
  const agent = startAgent(c.graph, ['--no-api', '--state-dir', state]);
  let stopped = false;
  try {
    const deadline = agent.startedAt + timeoutMs(c, opts);
    while (agent.convergedAt === undefined) {
      if (agent.child.exitCode !== null || agent.child.signalCode !== null) {
        out.problems.push(`agent exited before converging (${agent.child.exitCode ?? agent.child.signalCode}):\n${agent.recent.slice(-5).join('\n')}`);
        return;
      }
      if (performance.now() > deadline) {
        out.problems.push(`agent not converged after ${fmtSeconds((deadline - agent.startedAt) / 1000)}:\n${agent.recent.slice(-5).join('\n')}`);
        return;
      }
      await sleep(5);
    }
    const counts = agent.convergedCounts;
    if (counts === undefined || counts[0] !== c.vertices || counts[1] !== c.vertices) {
      out.problems.push(`agent converged ${counts?.[0]} of ${counts?.[1]}, expected ${c.vertices} of ${c.vertices}`);
      return;
    }
    out.values['agent.converged'] = (agent.convergedAt - agent.startedAt) / 1000;
    const first = watcher.first();
    if (c.files.length > 0) {
      if (first === undefined) out.problems.push('agent: the watch saw no managed file appear');
      else out.values['agent.first'] = (first - agent.startedAt) / 1000;
    }
    watcher.close();
    out.values['agent.quiet'] = await waitQuiet(agent.pid, AGENT_QUIET_SHARE, QUIET_MAX_S);
    await waitCompacted(agent);
    const idle = await measureIdle(agent.pid, opts.idleWindowS);
    out.values['agent.rss'] = idle.rssMiB * 1024;
    out.values['agent.peak'] = idle.peakRssMiB * 1024;
    out.values['agent.cpu'] = idle.cpuPercent;
    out.values['agent.stop'] = await stopAgent(agent);
    stopped = true;
    const problem = endStateProblem(c);
    if (problem !== undefined) out.problems.push(`agent: ${problem}`);
  } finally {
    watcher.close();
    if (!stopped) await stopAgent(agent);
  }
}

function progressLine(c: Case, run: number, runs: number, m: Measured): string {
  const v = m.values;
  const s = (x: number | undefined): string => (x === undefined ? '-' : fmtSeconds(x));
  const mib = (x: number | undefined): string => (x === undefined ? '-' : `${(x / 1024).toFixed(0)} MiB`);
  const parts = [
    `validate ${s(v['validate.wall'])} ${mib(v['validate.rss'])}`,
    `cold ${s(v['cold.wall'])} ${mib(v['cold.rss'])}${v['cold.first'] === undefined ? '' : ` (first file ${s(v['cold.first'])})`}`,
    `cache hit ${s(v['hit.wall'])}${v['hit.first'] === undefined ? '' : ` (first file ${s(v['hit.first'])})`}`,
    ...(c.kind === 'file' ? [`converged ${s(v['converged.wall'])} ${mib(v['converged.rss'])}`] : []),
    `agent converged ${s(v['agent.converged'])}${v['agent.first'] === undefined ? '' : ` (first file ${s(v['agent.first'])})`}, ` +
      `quiet ${s(v['agent.quiet'])} later, ` +
      `RSS ${mib(v['agent.rss'])} (peak ${mib(v['agent.peak'])}), CPU ${v['agent.cpu']?.toFixed(2) ?? '-'}%, stop ${s(v['agent.stop'])}`,
  ];
  const size = c.size === 0 ? 'empty' : c.size.toLocaleString('en-US');
  const failed = m.problems.length === 0 ? '' : `\n    FAILED: ${m.problems.join('\n    FAILED: ')}`;
  return `  ${c.kind} ${size} run ${run}/${runs}: ${parts.join('; ')}${failed}`;
}

async function measureCase(c: Case, opts: Options, run: number, runs: number): Promise<ScaleRun> {
  const m: Measured = { values: {}, problems: [] };
  await measureValidate(c, opts, run, m);
  await measureOneShot(c, 'cold', opts, run, m);
  await measureOneShot(c, 'hit', opts, run, m);
  // A noop resource has no state: its converged run would be its cold run again (see METRICS).
  if (c.kind === 'file') await measureOneShot(c, 'converged', opts, run, m);
  await measureAgent(c, opts, m);
  console.log(progressLine(c, run, runs, m));
  // 100,000 files take ~400 MB of disk; the graph and logs stay for --keep.
  if (c.dir !== undefined && !opts.keep) rmSync(c.dir, { recursive: true, force: true });
  return { values: m.values, problems: m.problems };
}

function runsOf(size: number, opts: Options): number {
  return size > BIG ? opts.bigRuns : opts.runs;
}

/**
 * Rounds, as in the main bench: round i measures every kind and size (the empty graph included) that still has a
 * run i, so a change in the machine's load spreads over all sizes instead of landing on whichever came last; the
 * ratios compare sizes, so that matters more here than the order of runs within one size.
 */
async function measureAll(tmp: string, opts: Options): Promise<ScalePoint[]> {
  const sizes = [0, ...opts.sizes];
  const cases = opts.kinds.flatMap((kind) => sizes.map((size) => makeCase(tmp, kind, size)));
  const points = new Map<Case, ScalePoint>(cases.map((c) => [c, { kind: c.kind, size: c.size, runs: [] }]));
  const rounds = Math.max(...sizes.map((n) => runsOf(n, opts)));
  for (let i = 0; i < rounds; i++) {
    for (const c of cases) {
      const runs = runsOf(c.size, opts);
      if (i < runs) points.get(c)?.runs.push(await measureCase(c, opts, i + 1, runs));
    }
  }
  return [...points.values()];
}

function notes(opts: Options, load: { readonly start: string; readonly end: string }): string[] {
  return [
    `Load average (1, 5, 15 min) at the start: ${load.start}; at the end: ${load.end}. The ratios compare sizes measured minutes apart, so a machine shared with other work moves them; on 2 cores, run this alone.`,
    envNote(droppedEnv()),
    'Every run: `--no-api` and a fresh `--state-dir` in a temp dir; one-shot runs are `run --converged-timeout 0`, the agent is `run` left running.',
    'Cold: the target directory exists and is empty. Converged: every file in place with its content and mode 0644, written by the bench (untimed).',
    'First file in place: a watch on the target directory (inotify, in the bench), from spawn to the first managed file appearing with its content; the watch closes at that event.',
    `Agent: started cold; "converged" is when its "converged: N of N resources" line arrives; "quiet" when a whole second then costs it ≤ ${AGENT_QUIET_SHARE * 100}% of one core (at most ${QUIET_MAX_S} s); then until it has compacted its heap once idle (src/agent/idle-compaction.ts: ${QUIET_MS / 1000} s after converging, logged; waited for from an agent above ${COMPACT_EXPECTED_KIB / 1024} MiB) and is quiet again; then ${opts.idleWindowS} s over which its CPU time is counted; RSS at the end of that window; then SIGTERM.`,
    `Peak RSS of validate and the one-shot runs: GNU time's maximum resident set size. A run that passes ${opts.timeoutS === undefined ? '60 s + 4 ms per resource' : `${opts.timeoutS} s`} is killed and reported as a failure.`,
  ];
}

/**
 * What the launcher runs, by file name, size and mtime: others may rebuild dist/ while a long scale run goes on, and
 * a run that measured two builds must not pass as one. Only the code files count: a build rewrites them all, and a
 * cache beside them might be rewritten by the CLI itself.
 */
function buildStamp(): string {
  const dist = join(REPO_ROOT, 'dist');
  try {
    return readdirSync(dist)
      .filter((f) => /\.[cm]?js$/.test(f))
      .sort()
      .map((f) => {
        const st = statSync(join(dist, f));
        return `${f}:${st.size}:${st.mtimeMs}`;
      })
      .join(',');
  } catch {
    return 'no dist/';
  }
}

/** The three load averages of /proc/loadavg. */
function loadAverages(): string {
  return loadavg().split(' ').slice(0, 3).join(', ');
}

function writeResults(res: ScaleResults, limitLines: readonly string[]): string[] {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const json = join(RESULTS_DIR, 'scale-latest.json');
  const md = join(RESULTS_DIR, 'scale-latest.md');
  writeFileSync(json, JSON.stringify(res, null, 2) + '\n');
  writeFileSync(md, `${renderScaleMarkdown(res)}\n\`\`\`\n${limitLines.join('\n')}\n\`\`\`\n`);
  return [json, md];
}

function cleanUpOnSignal(tmp: string, keep: boolean): void {
  const handler = (signal: NodeJS.Signals): void => {
    killAllChildren();
    if (!keep) rmSync(tmp, { recursive: true, force: true });
    console.error(`\nbench scale: interrupted by ${signal}`);
    process.exit(130);
  };
  process.once('SIGINT', handler);
  process.once('SIGTERM', handler);
}

/** Prints the tables and limits of results; returns the number of failures. */
function report(res: ScaleResults): ScaleCheck {
  const check = checkScale(res);
  console.log(`\n${renderScaleText(res)}\n\n${check.lines.join('\n')}\n`);
  return check;
}

/** --from: an earlier run's results, as written by writeResults (the shape is this file's own). */
function loadResults(path: string, stat: ScaleStat | undefined): ScaleResults {
  const data: unknown = JSON.parse(readFileSync(path, 'utf8'));
  if (typeof data !== 'object' || data === null || !('points' in data) || !('kinds' in data) || !('sizes' in data)) {
    throw new Error(`${path} is not the results of a scale run`);
  }
  const res = data as ScaleResults;
  return stat === undefined ? res : { ...res, stat };
}

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  if (opts === undefined) return 0;
  if (opts.from !== undefined) return report(loadResults(opts.from, opts.stat)).failures > 0 ? 1 : 0;
  if (!backplaneBuilt()) {
    console.error('bench scale: the CLI that bin/backplane.js loads is not built (run `npm run build`)');
    return 2;
  }
  const machine = machineInfo();
  console.log(`Machine: ${machine.uname} · ${machine.cpu} · ${machine.cores} cores · Node ${machine.node}`);
  console.log(
    `Scale: ${opts.kinds.join(', ')} × empty, ${opts.sizes.map(shortSize).join(', ')}; ` +
      `${opts.runs} run(s) up to ${shortSize(BIG)}, ${opts.bigRuns} above`,
  );
  const tmp = mkdtempSync(join(tmpdir(), 'backplane-scale-'));
  cleanUpOnSignal(tmp, opts.keep);
  const loadAtStart = loadAverages();
  const buildAtStart = buildStamp();
  let points: ScalePoint[];
  try {
    points = await measureAll(tmp, opts);
  } finally {
    killAllChildren();
    if (opts.keep) console.log(`\nKept ${tmp}`);
    else rmSync(tmp, { recursive: true, force: true });
  }
  const res: ScaleResults = {
    date: new Date().toISOString(),
    stat: opts.stat ?? 'min',
    machine,
    kinds: opts.kinds,
    sizes: opts.sizes,
    points,
    idleWindowS: opts.idleWindowS,
    notes: notes(opts, { start: loadAtStart, end: loadAverages() }),
    buildChanged: buildStamp() !== buildAtStart,
  };
  const check = report(res);
  for (const p of writeResults(res, check.lines)) console.log(`Wrote ${p}`);
  if (check.failures > 0) console.error(`\nbench scale: FAIL: ${check.failures} figure(s) past their bounds (the FAIL lines above)`);
  return check.failures > 0 ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    killAllChildren();
    console.error(`bench scale: ${e instanceof Error ? e.message : String(e)}`);
    process.exitCode = 2;
  },
);
