import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Desired, Invocation, Tool } from '../tools/types.js';
import { fmtSeconds } from './report.js';
import { tail, timedRun, type RunResult } from './proc.js';
import type { ReferenceResult, RunRecord, ToolResult, WorkloadResult } from './results.js';
import { median } from './stats.js';
import type { Reference, Workload } from './workloads.js';

/** Long enough for Ansible's 1,000 files (~5.5 min) with room for a slow machine; a hang must still end. */
const RUN_TIMEOUT_MS = 30 * 60_000;

interface Entry {
  readonly tool: Tool;
  readonly desired: Desired;
  readonly invocation: Invocation;
  readonly workDir: string;
  readonly targetDir: string;
  readonly runs: number;
  readonly result: ToolResult;
}

export interface RunPlan {
  readonly runs: number;
  readonly slowRuns: number;
  readonly tmp: string;
  readonly keep: boolean;
}

/** Ansible copies one file per task iteration through a fresh Python module, so only it is slow enough to cap. */
function runsFor(tool: Tool, w: Workload, plan: RunPlan): number {
  return tool.id === 'ansible' && w.manyFiles ? plan.slowRuns : plan.runs;
}

async function prepare(tool: Tool, w: Workload, plan: RunPlan): Promise<Entry> {
  const base = join(plan.tmp, tool.id, w.id);
  const workDir = join(base, 'work');
  const targetDir = join(base, 'target');
  mkdirSync(workDir, { recursive: true });
  const desired = await w.desired(targetDir);
  const runs = runsFor(tool, w, plan);
  const result: ToolResult = { runs: [] };
  if (runs === 0) result.skipped = 'skipped: --slow-runs 0';
  return { tool, desired, invocation: tool.prepare(desired, workDir), workDir, targetDir, runs, result };
}

interface RefEntry {
  readonly ref: Reference;
  readonly workDir: string;
  readonly result: ToolResult;
}

function prepareReference(ref: Reference, w: Workload, plan: RunPlan): RefEntry {
  const workDir = join(plan.tmp, 'reference', w.id, ref.id);
  mkdirSync(workDir, { recursive: true });
  return { ref, workDir, result: { runs: [] } };
}

/** A reference has no end state to check: it counts when it exits 0 within the timeout. */
async function runReference(entry: RefEntry, index: number, runs: number): Promise<RunRecord> {
  const log = join(entry.workDir, `run-${index + 1}.log`);
  const r = await timedRun({ argv: entry.ref.argv, okCodes: [0] }, log, RUN_TIMEOUT_MS);
  const problem = r.timedOut
    ? `timed out after ${RUN_TIMEOUT_MS / 60_000} min`
    : r.exitCode === 0
      ? undefined
      : `exit ${r.exitCode ?? r.signal}; log ${log}:\n${tail(log, 5)}`;
  const rss = r.maxRssKiB === undefined ? '' : `  ${(r.maxRssKiB / 1024).toFixed(0)} MiB`;
  const status = problem === undefined ? '' : `  FAILED: ${problem}`;
  console.log(`  ${entry.ref.id.padEnd(9)} run ${index + 1}/${runs}  ${fmtSeconds(r.wallS).padStart(7)}${rss}${status}`);
  return {
    wallS: r.wallS,
    ...(r.maxRssKiB === undefined ? {} : { maxRssKiB: r.maxRssKiB }),
    ...(problem === undefined ? {} : { problem }),
  };
}

async function problemOf(entry: Entry, w: Workload, r: RunResult, log: string): Promise<string | undefined> {
  if (r.timedOut) return `timed out after ${RUN_TIMEOUT_MS / 60_000} min`;
  if (r.exitCode === null || !entry.invocation.okCodes.includes(r.exitCode)) {
    return `exit ${r.exitCode ?? r.signal}; log ${log}:\n${tail(log, 5)}`;
  }
  return w.check(entry.desired, r.wallS);
}

async function runOnce(entry: Entry, w: Workload, index: number): Promise<RunRecord> {
  try {
    await w.setup(entry.desired);
  } catch (e) {
    const problem = `could not set up the run: ${e instanceof Error ? e.message : String(e)}`;
    console.log(`  ${entry.tool.label.padEnd(9)} run ${index + 1}/${entry.runs}  FAILED: ${problem}`);
    return { wallS: 0, problem };
  }
  const log = join(entry.workDir, `run-${index + 1}.log`);
  const r = await timedRun(entry.invocation, log, RUN_TIMEOUT_MS);
  const problem = await problemOf(entry, w, r, log);
  const rss = r.maxRssKiB === undefined ? '' : `  ${(r.maxRssKiB / 1024).toFixed(0)} MiB`;
  const status = problem === undefined ? '' : `  FAILED: ${problem}`;
  console.log(`  ${entry.tool.label.padEnd(9)} run ${index + 1}/${entry.runs}  ${fmtSeconds(r.wallS).padStart(7)}${rss}${status}`);
  return {
    wallS: r.wallS,
    ...(r.maxRssKiB === undefined ? {} : { maxRssKiB: r.maxRssKiB }),
    ...(problem === undefined ? {} : { problem }),
  };
}

function summarize(result: ToolResult): void {
  if (result.runs.length === 0 || result.runs.some((r) => r.problem !== undefined)) return;
  const wall = median(result.runs.map((r) => r.wallS));
  const rss = median(result.runs.flatMap((r) => (r.maxRssKiB === undefined ? [] : [r.maxRssKiB / 1024])));
  if (wall !== undefined) result.medianS = wall;
  if (rss !== undefined) result.medianRssMiB = rss;
}

/**
 * Runs are interleaved (run 1 of every tool, then run 2, …) so slow drift in machine load spreads over all tools
 * instead of landing on whichever ran last.
 */
export async function runWorkload(w: Workload, tools: readonly Tool[], plan: RunPlan): Promise<WorkloadResult> {
  console.log(`\n${w.title}`);
  const entries: Entry[] = [];
  const refs = (w.references ?? []).map((ref) => prepareReference(ref, w, plan));
  try {
    for (const t of tools.filter((t) => !w.backplaneOnly || t.id === 'backplane')) entries.push(await prepare(t, w, plan));
    const rounds = Math.max(0, ...entries.map((e) => e.runs), refs.length > 0 ? plan.runs : 0);
    for (let i = 0; i < rounds; i++) {
      for (const entry of entries) {
        if (i < entry.runs) entry.result.runs.push(await runOnce(entry, w, i));
      }
      // In the same round as the tools, so the floor is measured under the same load as what stands on it.
      for (const ref of refs) {
        if (i < plan.runs) ref.result.runs.push(await runReference(ref, i, plan.runs));
      }
    }
  } finally {
    for (const entry of entries) {
      // A failed teardown must not cost the other tools theirs, nor the results already measured.
      await w.teardown?.(entry.desired).catch((e: unknown) => {
        console.log(`  ${entry.tool.label}: could not clean up after ${w.id}: ${e instanceof Error ? e.message : String(e)}`);
      });
    }
  }
  const results: WorkloadResult['results'] = {};
  for (const entry of entries) {
    summarize(entry.result);
    results[entry.tool.id] = entry.result;
    // 10,000-file targets add up; the inputs and logs stay until the end for --keep.
    if (!plan.keep) rmSync(entry.targetDir, { recursive: true, force: true });
  }
  const references: ReferenceResult[] = refs.map((r) => {
    summarize(r.result);
    return { id: r.ref.id, title: r.ref.title, result: r.result };
  });
  return {
    id: w.id,
    title: w.title,
    ...(w.idealS === undefined ? {} : { idealS: w.idealS }),
    results,
    ...(references.length > 0 ? { references } : {}),
  };
}
