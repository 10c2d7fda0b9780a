import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
// Types only: the global `performance` serves, so loading the agent does not load perf_hooks (start-up cost).
import type { EventLoopUtilization } from 'node:perf_hooks';

/**
 * One compacting garbage collection once the agent has gone idle after settling, to give back what start-up left.
 *
 * Why: building and converging a graph allocates far more than the running agent keeps. At 10,000 files the heap held
 * 145 MiB when the agent went idle, 58 MiB of it live (heap snapshot): promises, closures and buffers of 10,000
 * checks in flight had been promoted to the old generation, and V8 collects the old generation only when allocation
 * pushes it to its limit, which an idle agent never does. Its last full collection ran two seconds into start-up, so
 * the garbage stayed for good (RSS 236 MiB, flat for minutes). V8's memory reducer did not step in (it waits for low
 * allocation after a full collection that never comes). A plain full collection frees the objects but leaves the old
 * generation's pages half empty and resident (RSS 201 MiB); a compacting one moves the survivors together and
 * unmaps the rest, and after a quiet while it also shrinks the young generation V8 grew to 32 MiB for the start-up
 * (RSS 122 MiB, measured with bench/scale.ts's figures).
 *
 * Node offers no compacting collection to JS: `--expose-gc` is set for the moment it takes to fetch `gc` from a new
 * context (the extension is installed in contexts made while the flag is on; the main context never sees a global
 * `gc`), and `--compact-on-every-full-gc` for the one call. It costs one pause, proportional to the live heap (0.4-0.9 s
 * at 10,000 files and 7 s at 100,000 on this loaded 2-core machine; a plain full collection takes a tenth), and while
 * it runs RSS rises by the live heap's size (it is copied before the old pages go). Hence: only once the engine has
 * been settled and the event loop nearly idle for a whole quiet period, and again only after the heap has grown well
 * past what the last compaction left. Changes that arrive during the pause are seen and repaired right after it (the
 * kernel queues the watch events); none is lost.
 */

/** How long the engine must stay settled and the loop idle before compacting. */
export const QUIET_MS = 10_000;
/**
 * Between a young-generation collection and the compaction. V8 shrinks the young generation after a full collection
 * only when the allocation rate it last recorded is low, and it records one at each collection, over the time since
 * the one before: without a collection in between, the last record is start-up's (the young generation stayed at
 * 32 MiB in about one run of two at 10,000 files). 5 s is the span V8 averages over.
 */
export const SETTLE_MS = 6_000;
/** The start of the line a compaction is reported with (bench/scale.ts waits for it before measuring an idle agent). */
export const COMPACTED = 'idle: heap compacted';
/** The event loop's busy share over the quiet period above which it does not count as idle. */
const BUSY_SHARE = 0.02;
/** Compact only when the heap in use exceeds what the last compaction left by this factor plus HEADROOM. */
const GROWTH = 1.5;
const HEADROOM = 16 * 1024 * 1024;

export type HeapStats = () => { readonly used: number };
export type Report = (message: string) => void;
export type Collection = 'young' | 'compacting';
export interface IdleCompactionOptions {
  readonly quietMs?: number;
  readonly settleMs?: number;
  /** Runs a garbage collection; false when it could not (no `gc` to be had). */
  readonly collect?: (kind: Collection) => boolean;
  readonly heap?: HeapStats;
  /** The event loop's busy share since `since` (undefined: the start of the process), as perf_hooks reports it. */
  readonly loopBusy?: (since: EventLoopUtilization | undefined) => EventLoopUtilization;
}

export class IdleCompaction {
  private timer: NodeJS.Timeout | undefined;
  private activity = false;
  /** What the running timer leads to: a check of the quiet period, or (after the young collection) the compaction. */
  private step: 'quiet' | 'settle' = 'quiet';
  private elu: EventLoopUtilization | undefined;
  /** Heap in use right after the last compaction (0: none yet). */
  private liveAfterLast = 0;
  private disabled = false;
  private report: Report | undefined;
  /** Compactions run (for tests). */
  runs = 0;
  private readonly quietMs: number;
  private readonly settleMs: number;
  private readonly collect: (kind: Collection) => boolean;
  private readonly heap: HeapStats;
  private readonly loopBusy: (since: EventLoopUtilization | undefined) => EventLoopUtilization;

  constructor(opts: IdleCompactionOptions = {}) {
    this.quietMs = opts.quietMs ?? QUIET_MS;
    this.settleMs = opts.settleMs ?? SETTLE_MS;
    this.collect = opts.collect ?? collectGarbage;
    this.heap = opts.heap ?? (() => ({ used: getHeapStatistics().used_heap_size }));
    this.loopBusy = opts.loopBusy ?? ((since) => performance.eventLoopUtilization(since));
  }

  /**
   * The engine settled or unsettled: whatever it was doing, the quiet period starts (again) now. `report` is told
   * about a compaction (the latest caller's is used: one process's agents share its heap).
   */
  poke(report?: Report): void {
    if (this.disabled) return;
    if (report !== undefined) this.report = report;
    if (this.timer !== undefined) {
      this.activity = true;
      return;
    }
    this.arm('quiet');
  }

  stop(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private arm(step: 'quiet' | 'settle'): void {
    this.step = step;
    this.activity = false;
    this.elu = this.loopBusy(undefined);
    this.timer = setTimeout(() => this.fire(), step === 'quiet' ? this.quietMs : this.settleMs);
    // A one-shot run exits when its work is done; a pending compaction must not hold it.
    this.timer.unref();
  }

  private fire(): void {
    this.timer = undefined;
    const busy = this.loopBusy(this.elu).utilization > BUSY_SHARE;
    if (this.activity || busy) {
      this.arm('quiet');
      return;
    }
    const before = this.heap().used;
    if (before <= this.liveAfterLast * GROWTH + HEADROOM) return;
    if (this.step === 'quiet') {
      if (this.collect('young')) this.arm('settle');
      else this.disabled = true;
      return;
    }
    const started = performance.now();
    if (!this.collect('compacting')) {
      this.disabled = true;
      return;
    }
    const ms = performance.now() - started;
    this.runs++;
    this.liveAfterLast = this.heap().used;
    // Said at info level: the pause is the agent's own doing, and an operator who sees a repair delayed once by it
    // should find why in the log.
    this.report?.(`${COMPACTED} once idle: ${mib(before)} -> ${mib(this.liveAfterLast)} MiB in use, ${Math.round(ms)} ms`);
  }
}

function mib(bytes: number): string {
  return (bytes / 1048576).toFixed(0);
}

type Gc = (options?: { type: 'minor' | 'major' }) => void;
let gcFunction: Gc | null | undefined;

/** V8's `gc`, fetched once; null when this Node refuses it. */
function gcFn(): Gc | null {
  if (gcFunction !== undefined) return gcFunction;
  const global = (globalThis as { gc?: unknown }).gc;
  if (typeof global === 'function') return (gcFunction = global as Gc);
  try {
    setFlagsFromString('--expose-gc');
    const fn: unknown = runInNewContext('gc');
    gcFunction = typeof fn === 'function' ? (fn as Gc) : null;
  } catch {
    gcFunction = null;
  } finally {
    setFlagsFromString('--no-expose-gc');
  }
  return gcFunction;
}

/** A young-generation collection, or a full and compacting one, now. False when `gc` is not to be had. */
export function collectGarbage(kind: Collection): boolean {
  const gc = gcFn();
  if (gc === null) return false;
  if (kind === 'young') {
    gc({ type: 'minor' });
    return true;
  }
  setFlagsFromString('--compact-on-every-full-gc');
  try {
    gc();
  } finally {
    setFlagsFromString('--no-compact-on-every-full-gc');
  }
  return true;
}

/** The process's one instance: its heap is shared by every agent it runs. */
export const idleCompaction = new IdleCompaction();
