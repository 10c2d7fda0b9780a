import { unlinkSync, watch, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { hasContent } from '../lib/fileset.js';
import { median, percentile, seededRandom } from '../lib/stats.js';
import type { FileSpec } from '../tools/types.js';

export interface DriftResult {
  readonly samples: number;
  readonly medianMs: number | undefined;
  readonly p99Ms: number | undefined;
  readonly maxMs: number | undefined;
  readonly medianDeleteMs: number | undefined;
  readonly medianOverwriteMs: number | undefined;
  /** Damage not repaired within the timeout. */
  readonly unrepaired: number;
}

interface Pending {
  readonly file: FileSpec;
  readonly name: string;
  readonly t0: number;
  readonly done: (ms: number) => void;
}

/**
 * Damages one file at a time and times until the agent has restored it. Detection is a watch on the directory
 * (~0.3 ms, see FACTS) plus a re-read of the file on each of its events; a 5 ms poll only guards against a missed
 * event. The clock starts after the damaging syscall returned, since the agent cannot see it before.
 */
export async function measureDrift(
  dir: string,
  files: readonly FileSpec[],
  samples: number,
  gapMs: number,
  timeoutMs: number,
): Promise<DriftResult> {
  const random = seededRandom(42);
  let pending: Pending | undefined;
  const check = (): void => {
    const p = pending;
    if (p !== undefined && hasContent(p.file.path, p.file.content)) p.done(performance.now() - p.t0);
  };
  const watcher = watch(dir, (_event, name) => {
    if (name === pending?.name) check();
  });
  const poll = setInterval(check, 5);
  const deletes: number[] = [];
  const overwrites: number[] = [];
  let unrepaired = 0;
  try {
    for (let i = 0; i < samples; i++) {
      const file = files[Math.floor(random() * files.length)];
      if (file === undefined) continue;
      const remove = random() < 0.5;
      const ms = await repairTime(file, remove, timeoutMs, (p) => (pending = p));
      pending = undefined;
      if (ms === undefined) unrepaired++;
      else (remove ? deletes : overwrites).push(ms);
      await sleep(gapMs);
    }
  } finally {
    clearInterval(poll);
    watcher.close();
  }
  const all = [...deletes, ...overwrites];
  return {
    samples,
    medianMs: median(all),
    p99Ms: percentile(all, 99),
    maxMs: all.length > 0 ? Math.max(...all) : undefined,
    medianDeleteMs: median(deletes),
    medianOverwriteMs: median(overwrites),
    unrepaired,
  };
}

function repairTime(
  file: FileSpec,
  remove: boolean,
  timeoutMs: number,
  arm: (p: Pending) => void,
): Promise<number | undefined> {
  return new Promise((resolve) => {
    let settled = false;
    const finish = (ms: number | undefined): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(ms);
    };
    const timer = setTimeout(() => finish(undefined), timeoutMs);
    if (remove) unlinkSync(file.path);
    else writeFileSync(file.path, `junk ${performance.now()}\n`);
    arm({ file, name: basename(file.path), t0: performance.now(), done: finish });
  });
}
