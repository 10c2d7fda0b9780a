import { APT_GET, BASE_ARGS, classify, errorLines, mentions, removedPackages, runAptGet, type FailureClass } from './apt.js';

/**
 * Groups package changes into apt transactions. apt-get costs 0.4–6 s per call whatever it does (reading the
 * package lists, triggers), and only one can hold the dpkg lock at a time: 50 packages installed one call each take
 * minutes and queue on the lock; in one call they take seconds. So requests that arrive within a short window (or
 * while a call is running) are combined into one `apt-get install a b=1.2 c-`.
 *
 * If the combined call fails, one bad package must not fail its batch-mates: the packages apt's error names are
 * set aside and the rest tried again together; the suspects (or, when apt named no one, everybody) are then tried
 * one by one, so each failure is reported with its own error. A problem no package causes (the dpkg lock, an
 * interrupted dpkg) fails everyone at once instead: one call per package would only repeat it.
 */

export type PkgAction = 'install' | 'remove' | 'purge';

export interface PkgRequest {
  /** As the resource names it, possibly `name:arch`. */
  readonly name: string;
  readonly action: PkgAction;
  /** Only for install: an exact version (`apt-get install name=version`). */
  readonly version?: string | undefined;
  /** Extra apt-get arguments; requests with different options never share a call. */
  readonly aptOptions: readonly string[];
}

export type PkgOutcome =
  | {
      readonly kind: 'done';
      /** Packages apt removed besides the ones asked for (reverse dependencies, conflicts). */
      readonly alsoRemoved: readonly string[];
      /** How many requests shared the successful call. */
      readonly batchSize: number;
      readonly durationMs: number;
    }
  | {
      readonly kind: 'failed';
      readonly cls: FailureClass;
      /** The command as a person would retype it (without the fixed options). */
      readonly command: string;
      readonly exit: string;
      /** The lines of apt's output that explain this package's failure. */
      readonly lines: readonly string[];
      /** How long the failed apt-get ran: for a lock failure, how long it really waited (not its configured limit). */
      readonly durationMs: number;
    }
  | { readonly kind: 'aborted' };

/** One apt-get run, for tests and debugging. */
export interface AptCall {
  readonly args: readonly string[];
  readonly specs: readonly string[];
  readonly result: 'ok' | 'failed' | 'aborted' | 'spawn-error';
  readonly code: number | null;
  readonly durationMs: number;
}

export interface BatcherStats {
  /** apt-get processes started. */
  invocations: number;
  /** The most recent calls, oldest first (bounded). */
  readonly calls: AptCall[];
}

export interface BatcherOptions {
  /** How long the first request of a batch waits for others. */
  readonly windowMs?: number;
  /** The apt-get binary (tests may point this at a wrapper). */
  readonly aptGet?: string;
}

interface Waiter {
  readonly resolve: (o: PkgOutcome) => void;
}

interface Job {
  readonly key: string;
  readonly req: PkgRequest;
  readonly spec: string;
  readonly waiters: Set<Waiter>;
}

interface Running {
  readonly jobs: readonly Job[];
  readonly controller: AbortController;
}

type CallResult =
  | { readonly kind: 'ok'; readonly lines: readonly string[]; readonly durationMs: number }
  | { readonly kind: 'failed'; readonly lines: readonly string[]; readonly exit: string; readonly durationMs: number }
  | { readonly kind: 'aborted' };

const MAX_CALLS_KEPT = 100;
const MAX_REPORT_LINES = 20;

export class AptBatcher {
  readonly stats: BatcherStats = { invocations: 0, calls: [] };
  private readonly windowMs: number;
  private readonly aptGet: string;
  private readonly pending = new Map<string, Job>();
  private timer: NodeJS.Timeout | undefined;
  private draining = false;
  private running: Running | undefined;

  constructor(opts: BatcherOptions = {}) {
    this.windowMs = opts.windowMs ?? 20;
    this.aptGet = opts.aptGet ?? APT_GET;
  }

  /**
   * Resolves once the request has been carried out (or failed, or `signal` aborted). Never rejects. Aborting only
   * gives up waiting; the apt-get process is killed only when every request it serves has been given up.
   */
  submit(req: PkgRequest, signal: AbortSignal): Promise<PkgOutcome> {
    if (signal.aborted) return Promise.resolve({ kind: 'aborted' });
    const spec = specOf(req);
    const key = `${JSON.stringify(req.aptOptions)}\0${req.action}\0${spec}`;
    let job = this.pending.get(key);
    if (job === undefined) {
      job = { key, req, spec, waiters: new Set() };
      this.pending.set(key, job);
    }
    const theJob = job;
    return new Promise<PkgOutcome>((resolve) => {
      const onAbort = (): void => {
        if (!theJob.waiters.delete(waiter)) return;
        resolve({ kind: 'aborted' });
        this.abandoned(theJob);
      };
      const waiter: Waiter = {
        resolve: (o) => {
          signal.removeEventListener('abort', onAbort);
          resolve(o);
        },
      };
      theJob.waiters.add(waiter);
      signal.addEventListener('abort', onAbort, { once: true });
      if (!this.draining && this.timer === undefined) this.timer = setTimeout(() => void this.drain(), this.windowMs);
    });
  }

  private abandoned(job: Job): void {
    if (job.waiters.size > 0) return;
    if (this.pending.get(job.key) === job) this.pending.delete(job.key);
    const run = this.running;
    if (run !== undefined && run.jobs.every((j) => j.waiters.size === 0)) run.controller.abort();
  }

  private async drain(): Promise<void> {
    this.timer = undefined;
    if (this.draining) return;
    this.draining = true;
    try {
      // Requests that arrive while apt runs are picked up right after it: they have waited long enough.
      while (this.pending.size > 0) {
        const jobs = [...this.pending.values()];
        this.pending.clear();
        for (const group of groupJobs(jobs)) {
          try {
            await this.runGroup(group.jobs, group.purge);
          } catch (err) {
            // A bug here must not leave resources waiting forever.
            const lines = [err instanceof Error ? err.message : String(err)];
            for (const j of group.jobs) settle(j, { kind: 'failed', cls: 'other', command: commandText(group.jobs, group.purge), exit: 'internal error', lines, durationMs: 0 });
          }
        }
      }
    } finally {
      this.draining = false;
    }
  }

  private async runGroup(jobs: readonly Job[], purge: boolean): Promise<void> {
    const live = jobs.filter((j) => j.waiters.size > 0);
    if (live.length === 0) return;
    const first = await this.call(live, purge);
    if (first.kind !== 'failed') {
      this.settleAll(live, first);
      return;
    }
    const errs = errorLines(first.lines);
    const cls = classify(first.lines);
    if (live.length === 1 || cls === 'lock' || cls === 'interrupted') {
      for (const j of live) settle(j, failure(live, purge, first));
      return;
    }
    const suspects = live.filter((j) => errs.some((l) => mentions(l, j.req.name)));
    let alone = live;
    if (suspects.length > 0 && suspects.length < live.length) {
      const rest = live.filter((j) => !suspects.includes(j)).filter((j) => j.waiters.size > 0);
      const second = rest.length === 0 ? undefined : await this.call(rest, purge);
      if (second !== undefined && second.kind !== 'failed') {
        this.settleAll(rest, second);
        alone = suspects;
      }
    }
    for (const j of alone) {
      if (j.waiters.size === 0) continue;
      const r = await this.call([j], purge);
      if (r.kind === 'failed') settle(j, failure([j], purge, r));
      else this.settleAll([j], r);
    }
  }

  private settleAll(jobs: readonly Job[], r: Exclude<CallResult, { kind: 'failed' }>): void {
    if (r.kind === 'aborted') {
      for (const j of jobs) settle(j, { kind: 'aborted' });
      return;
    }
    const asked = new Set(jobs.filter((j) => j.req.action !== 'install').map((j) => baseName(j.req.name)));
    const alsoRemoved = removedPackages(r.lines).filter((n) => !asked.has(baseName(n)));
    for (const j of jobs) settle(j, { kind: 'done', alsoRemoved, batchSize: jobs.length, durationMs: r.durationMs });
  }

  private async call(jobs: readonly Job[], purge: boolean): Promise<CallResult> {
    const opts = jobs[0]?.req.aptOptions ?? [];
    // Sorted: the same batch gives the same command line whatever order its requests arrived in.
    const specs = jobs.map((j) => j.spec).sort();
    const args = ['install', ...BASE_ARGS, ...(purge ? ['--purge'] : []), ...opts, ...specs];
    const controller = new AbortController();
    this.running = { jobs, controller };
    this.stats.invocations++;
    try {
      const o = await runAptGet({ args, signal: controller.signal }, this.aptGet);
      const record = (result: AptCall['result'], code: number | null, durationMs: number): void => {
        this.stats.calls.push({ args, specs, result, code, durationMs });
        if (this.stats.calls.length > MAX_CALLS_KEPT) this.stats.calls.shift();
      };
      switch (o.kind) {
        case 'aborted':
          record('aborted', null, 0);
          return { kind: 'aborted' };
        case 'spawn-error':
          record('spawn-error', null, 0);
          return { kind: 'failed', lines: [`could not start ${this.aptGet}: ${o.error.message}`], exit: 'did not start', durationMs: 0 };
        case 'exited':
          record(o.code === 0 ? 'ok' : 'failed', o.code, o.durationMs);
          if (o.code === 0) return { kind: 'ok', lines: o.lines, durationMs: o.durationMs };
          return { kind: 'failed', lines: o.lines, exit: o.code !== null ? `exit code ${o.code}` : `killed by ${o.signal ?? 'a signal'}`, durationMs: o.durationMs };
      }
    } finally {
      this.running = undefined;
    }
  }
}

function failure(jobs: readonly Job[], purge: boolean, r: { lines: readonly string[]; exit: string; durationMs: number }): PkgOutcome {
  const errs = errorLines(r.lines);
  const lines = errs.length > 0 ? errs : r.lines.filter((l) => l.trim() !== '').slice(-10);
  return {
    kind: 'failed',
    cls: classify(r.lines),
    command: commandText(jobs, purge),
    exit: r.exit,
    durationMs: r.durationMs,
    lines: lines.length > MAX_REPORT_LINES ? [...lines.slice(0, MAX_REPORT_LINES), `… (${lines.length - MAX_REPORT_LINES} more lines)`] : lines,
  };
}

function settle(job: Job, o: PkgOutcome): void {
  for (const w of job.waiters) w.resolve(o);
  job.waiters.clear();
}

function commandText(jobs: readonly Job[], purge: boolean): string {
  return `apt-get install${purge ? ' --purge' : ''} ${jobs.map((j) => j.spec).sort().join(' ')}`;
}

function specOf(req: PkgRequest): string {
  if (req.action !== 'install') return `${req.name}-`;
  return req.version === undefined ? req.name : `${req.name}=${req.version}`;
}

function baseName(name: string): string {
  const c = name.indexOf(':');
  return c === -1 ? name : name.slice(0, c);
}

/**
 * Calls that can be made together. `--purge` turns every removal in a call into a purge, so plain removals get
 * their own call when purges are in the same batch; installs ride along with the purges.
 */
function groupJobs(jobs: readonly Job[]): { jobs: Job[]; purge: boolean }[] {
  const byOpts = new Map<string, Job[]>();
  for (const j of jobs) {
    const k = JSON.stringify(j.req.aptOptions);
    const list = byOpts.get(k);
    if (list === undefined) byOpts.set(k, [j]);
    else list.push(j);
  }
  const out: { jobs: Job[]; purge: boolean }[] = [];
  for (const list of byOpts.values()) {
    const purges = list.some((j) => j.req.action === 'purge');
    if (!purges) {
      out.push({ jobs: list, purge: false });
      continue;
    }
    out.push({ jobs: list.filter((j) => j.req.action !== 'remove'), purge: true });
    const removes = list.filter((j) => j.req.action === 'remove');
    if (removes.length > 0) out.push({ jobs: removes, purge: false });
  }
  return out;
}

/** The batcher all `pkg` resources of this process share. */
export const aptBatcher = new AptBatcher();
/** Counters of the shared batcher (tests count apt-get invocations with these). */
export const aptStats: BatcherStats = aptBatcher.stats;
