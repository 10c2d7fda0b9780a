/**
 * Backplane's benchmark suite: the same workloads through Backplane, Puppet, Ansible and CFEngine in one run,
 * then Backplane-only measurements of a running agent (drift repair, idle cost). Start it with `npm run bench`,
 * which builds Backplane and installs the peers first; `npm run bench -- --help` lists the options.
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { measureDriftRepair, measureIdleCost } from './live/index.js';
import { parseOptions, type Options } from './lib/options.js';
import { checkLimits } from './lib/limits.js';
import { droppedEnv, envNote, killAllChildren } from './lib/proc.js';
import { renderMarkdown, renderText } from './lib/report.js';
import type { BenchResults, LiveResults, WorkloadResult } from './lib/results.js';
import { runWorkload } from './lib/runner.js';
import { machineInfo } from './lib/sysinfo.js';
import { WORKLOADS } from './lib/workloads.js';
import { REPO_ROOT } from './tools/backplane.js';
import { detectTools } from './tools/index.js';
import { PEER_IDS, type Tool } from './tools/types.js';

const RESULTS_DIR = join(REPO_ROOT, 'bench', 'results');

/** An interrupted bench must not leave peers, agents or thousands of files behind. */
function cleanUpOnSignal(tmp: string, keep: boolean): void {
  const handler = (signal: NodeJS.Signals): void => {
    killAllChildren();
    if (!keep) rmSync(tmp, { recursive: true, force: true });
    console.error(`\nbench: interrupted by ${signal}`);
    process.exit(130);
  };
  process.once('SIGINT', handler);
  process.once('SIGTERM', handler);
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

async function runLive(opts: Options, tools: readonly Tool[], tmp: string): Promise<LiveResults> {
  const live: LiveResults = { errors: [] };
  const wanted = ['drift', 'idle'].filter((id) => opts.workloads.has(id));
  if (wanted.length === 0) return live;
  if (!tools.some((t) => t.id === 'backplane')) {
    live.errors.push('drift repair and idle cost need the built Backplane CLI; run `npm run build`');
    return live;
  }
  if (opts.workloads.has('drift')) {
    try {
      live.drift = await measureDriftRepair(tmp, opts.driftSamples);
    } catch (e) {
      live.errors.push(`drift repair: ${errorText(e)}`);
    }
  }
  if (opts.workloads.has('idle')) {
    try {
      live.idle = await measureIdleCost(tmp);
    } catch (e) {
      live.errors.push(`idle cost: ${errorText(e)}`);
    }
  }
  return live;
}

/** Timestamped files for the record, plus latest.* for pasting into the README. */
function writeResults(results: BenchResults, limitLines: readonly string[]): string[] {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const stamp = results.date.replace(/[:.]/g, '-');
  const json = JSON.stringify(results, null, 2) + '\n';
  const md = `${renderMarkdown(results)}\n\`\`\`\n${limitLines.join('\n')}\n\`\`\`\n`;
  const paths = [`bench-${stamp}.json`, `bench-${stamp}.md`, 'latest.json', 'latest.md'].map((p) => join(RESULTS_DIR, p));
  const contents = [json, md, json, md];
  paths.forEach((p, i) => writeFileSync(p, contents[i] ?? ''));
  return paths.slice(0, 2);
}

function notesFor(missing: readonly string[], opts: Options): string[] {
  const notes: string[] = [];
  if (missing.includes('backplane')) notes.push('Backplane was not measured: the CLI that bin/backplane.js loads is not built (run `npm run build`).');
  const peers = missing.filter((m) => m !== 'backplane');
  if (peers.length > 0) notes.push(`Not installed, so not measured: ${peers.join(', ')}.`);
  if (opts.slowRuns === 0) notes.push("Ansible's 1,000-file workloads were skipped (--slow-runs 0 or --quick).");
  notes.push(envNote(droppedEnv()));
  return notes;
}

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  if (opts === undefined) return 0;
  const { tools, missing } = detectTools(opts.peers ?? PEER_IDS, true);
  const machine = machineInfo();
  console.log(`Machine: ${machine.uname} · ${machine.cpu} · ${machine.cores} cores · Node ${machine.node}`);
  console.log(`Tools: ${tools.map((t) => `${t.label} ${t.version}`).join(', ') || 'none'}`);
  for (const note of notesFor(missing, opts)) console.log(`Note: ${note}`);

  const tmp = mkdtempSync(join(tmpdir(), 'backplane-bench-'));
  // nginx's workers run as nobody and must reach the nginx stack's document root inside; listing stays closed.
  chmodSync(tmp, 0o711);
  cleanUpOnSignal(tmp, opts.keep);
  const workloads: WorkloadResult[] = [];
  let live: LiveResults = { errors: [] };
  try {
    const plan = { runs: opts.runs, slowRuns: opts.slowRuns, tmp, keep: opts.keep };
    for (const w of WORKLOADS.filter((w) => opts.workloads.has(w.id))) {
      if (w.backplaneOnly && !tools.some((t) => t.id === 'backplane')) continue;
      workloads.push(await runWorkload(w, tools, plan));
    }
    live = await runLive(opts, tools, tmp);
  } finally {
    killAllChildren();
    if (opts.keep) console.log(`\nKept ${tmp}`);
    else rmSync(tmp, { recursive: true, force: true });
  }

  const results: BenchResults = {
    date: new Date().toISOString(),
    machine,
    tools: tools.map((t) => ({ id: t.id, label: t.label, version: t.version })),
    runs: opts.runs,
    slowRuns: opts.slowRuns,
    workloads,
    live,
    notes: notesFor(missing, opts),
  };
  const limits = checkLimits(results);
  console.log(`\n${renderText(results)}\n\n${limits.lines.join('\n')}\n`);
  for (const p of writeResults(results, limits.lines)) console.log(`Wrote ${p}`);
  const failed = workloads.some((w) =>
    [...Object.values(w.results), ...(w.references ?? []).map((r) => r.result)].some((r) => r.runs.some((run) => run.problem !== undefined)),
  );
  // Last, so that it is the line one sees: a regression past a limit fails the bench like a broken run does.
  if (limits.failures > 0) console.error(`\nbench: FAIL: ${limits.failures} figure(s) past their speed limit (the FAIL lines above)`);
  // Every figure is Backplane's or a ratio to it: a run without it measured nothing the README needs.
  if (missing.includes('backplane')) console.error('\nbench: FAIL: Backplane was not measured (its built CLI was not found; run `npm run build`)');
  return failed || live.errors.length > 0 || limits.failures > 0 || missing.includes('backplane') ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    killAllChildren();
    console.error(`bench: ${errorText(e)}`);
    process.exitCode = 2;
  },
);
