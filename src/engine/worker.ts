import { BackplaneError, errorMessage } from '../errors.js';
import type { Vertex } from '../graph/graph.js';
import type { Logger } from '../log.js';
import type { KindMetrics } from '../api/metrics.js';
import type { AttachedWatchContext, CheckApplyContext, CheckResult, CloseReason, Resource, ResourceLog } from '../resources/types.js';
import { formatDuration } from '../util/duration.js';
import { TokenBucket } from './rate-limit.js';
import type { VertexState, VertexStatus } from './state.js';

/** What a worker needs from its engine: its neighbours' states, locks, and where to report. */
export interface WorkerHost {
  readonly noop: boolean;
  /** false: check once, never watch or poll (EngineOptions.watch). */
  readonly watch: boolean;
  /** 'ready' when every dependency is converged; otherwise the first one that is not, and whether it is stuck. */
  dependencyGate(w: Worker): { gate: 'ready' } | { gate: 'wait' } | { gate: 'blocked'; by: Vertex['id'] };
  /** The run's slot(s): the release function at once when nothing limits it, else a promise of it. */
  acquire(w: Worker): (() => void) | Promise<() => void>;
  stateChanged(w: Worker, prev: VertexState): void;
  /** The vertex changed something: re-run dependents, refreshing notify targets. */
  propagateChange(w: Worker): void;
}

const WATCH_RESTART_MAX_MS = 30_000;
/**
 * Oscillation: this many changes within the window, each in a run woken by the resource's own watch alone. Two file
 * resources fighting flipped ~390 times a second here; a person or a deploy tool editing what a resource manages
 * does not come near 20 times in 2 s.
 */
const OSCILLATION_CHANGES = 20;
const OSCILLATION_WINDOW_MS = 2000;
const OSCILLATION_HOLD_MS = 60_000;

/** A resource's log lines under its id: one small object per worker, no closures (100,000 workers idle in memory). */
class ResourceLines implements ResourceLog {
  constructor(private readonly l: Logger) {}
  change(m: string): void {
    this.l.info(m);
  }
  info(m: string, f?: Record<string, unknown>): void {
    this.l.info(m, f);
  }
  warn(m: string, f?: Record<string, unknown>): void {
    this.l.warn(m, f);
  }
  debug(m: string, f?: Record<string, unknown>): void {
    this.l.debug(m, f);
  }
}

/**
 * One worker per vertex: it owns the resource's watch and runs its check/apply whenever something marked it dirty
 * (its watch, a dependency that changed, a notify, a poll tick) and all its dependencies are converged.
 * Events that arrive while it runs are coalesced into exactly one more run.
 *
 * Event-driven, not a loop: every event calls step(), which starts a run when one is owed and allowed, and an idle
 * worker holds no pending promise, timer or listener of its own — an agent managing 100,000 resources keeps 100,000
 * of these in memory doing nothing until something changes.
 */
export class Worker {
  state: VertexState = 'pending';
  private dirty = true;
  private refresh = false;
  private watchReady = false;
  private attempts = 0;
  private runs = 0;
  private changeCount = 0;
  /** Whether something other than this resource's own watch asked for a run since the last one (oscillation). */
  private outsideCause = true;
  /** Whether something other than its watch or a poll tick asked for a run since the last one (drift repairs). */
  private nonDriftCause = true;
  /** The vertex last settled as converged (not failed or blocked): a change made now is a repair of drift. */
  private wasConverged = false;
  /** When recent runs woken by the watch alone changed something: a fight shows as many of them close together. */
  private watchChanges: number[] | undefined;
  /** Held after an oscillation: runs only once the hold ends or the graph is swapped (release()). */
  private holdTimer: NodeJS.Timeout | undefined;
  private lastError: string | undefined;
  private blockedBy: Vertex['id'] | undefined;
  private noopResult: CheckResult | undefined;
  /** The check/apply (with its retry delay) in progress. */
  private inflight: Promise<void> | undefined;
  /** step() is on the stack: a nested call (a state listener poking back) only asks for one more pass. */
  private stepping = false;
  private stepAgain = false;
  /** A rate-limit wait, a poll interval or a watch restart back-off. */
  private timer: NodeJS.Timeout | undefined;
  /** The retry delay inside a run: ended early by stop(). */
  private pause: { timer: NodeJS.Timeout; resolve: () => void } | undefined;
  /** The resource's watch, while it runs (resolves once it ended after stop()). */
  private watching: Promise<void> | undefined;
  /**
   * The controller behind `signal`, made on first use: a converged check of a one-shot run never looks at its signal,
   * and an AbortController (an EventTarget) per worker, made and then aborted one by one at exit, was ~5% of a
   * converged 1,000-file run and most of its shutdown. `halted` is the worker's own record that it was aborted.
   */
  private ac: AbortController | undefined;
  private halted = false;
  private haltReason: unknown;
  /** A watch restart back-off in progress (cleared when the worker is aborted). */
  private watchTimer: NodeJS.Timeout | undefined;
  /**
   * This resource's logger and the lines its kind writes through, made on first use: most workers of a big run log
   * nothing but one change (a converged check logs nothing at info), and two objects per worker, made as 100,000
   * workers started, were garbage the collector had to copy while the first files waited.
   */
  private logger: Logger | undefined;
  private lines: ResourceLog | undefined;
  /** meta.limit/burst: check/apply runs are rate limited (engine policy, never the kind's). */
  private readonly limiter: TokenBucket | undefined;

  constructor(
    readonly vertex: Vertex,
    private readonly resource: Resource,
    private readonly host: WorkerHost,
    /** The engine's logger: this worker's lines go through its forResource(id). */
    private readonly logs: Logger,
    private readonly metrics?: KindMetrics,
  ) {
    const { limit, burst } = vertex.meta;
    this.limiter = limit === undefined ? undefined : new TokenBucket(limit, burst ?? 1);
  }

  private get log(): Logger {
    return (this.logger ??= this.logs.forResource(this.vertex.id));
  }

  /** What the resource's check/apply and watch log through (under this resource's id). */
  resourceLog(): ResourceLog {
    return (this.lines ??= new ResourceLines(this.log));
  }

  get id(): Vertex['id'] {
    return this.vertex.id;
  }

  /** Aborted when the worker is stopped: what its resource's check/apply and watch are given. */
  get signal(): AbortSignal {
    if (this.ac === undefined) {
      this.ac = new AbortController();
      if (this.halted) this.ac.abort(this.haltReason);
    }
    return this.ac.signal;
  }

  /** Aborted (the signal's `aborted`, whether or not the signal was made). */
  get stopped(): boolean {
    return this.halted;
  }

  start(): void {
    this.startWatch();
    if (!this.host.noop) this.resource.prepare?.(this.resourceLog());
    this.step();
  }

  /** Something changed that this vertex must re-check (refresh: a notify edge fired). */
  poke(refresh: boolean, reason?: string, fromWatch = false, poll = false): void {
    if (this.halted) return;
    if (reason !== undefined) this.log.debug(`event: ${reason}`);
    this.dirty = true;
    if (refresh) this.refresh = true;
    if (!fromWatch) this.outsideCause = true;
    if (!fromWatch && !poll) this.nonDriftCause = true;
    // Held after an oscillation: the event is remembered (dirty) for when the hold ends, and changes nothing now.
    if (this.holdTimer !== undefined) return;
    // A failed resource gets a fresh set of retries when the world changes: the event may be the fix.
    if (this.state === 'failed') this.attempts = 0;
    // Become active synchronously, so the engine never sees a settled graph between a change and its re-run.
    if (this.state === 'converged' || this.state === 'failed' || this.state === 'blocked') this.setState('pending');
    this.step();
  }

  /** Ends an oscillation hold (the graph was swapped: the fight may be over): a run follows if one is owed. */
  release(): void {
    if (this.holdTimer === undefined) return;
    clearTimeout(this.holdTimer);
    this.holdTimer = undefined;
    this.watchChanges = undefined;
    this.outsideCause = true;
    if (this.dirty) this.poke(false, 'oscillation hold ended');
  }

  /**
   * Two writers of one thing (another program, or a resource this graph cannot see overlapping) make a resource
   * change, see its watch fire, change it back, forever. Counted are only changes made in runs its own watch alone
   * woke: a dependency, a notify, a poll or a graph swap is an outside reason to run. Too many of those in a short
   * time is reported and the resource held (failed) instead of spinning; a graph swap or the hold's end lets it run.
   */
  private oscillating(): boolean {
    const now = Date.now();
    const recent = (this.watchChanges ?? []).filter((t) => now - t < OSCILLATION_WINDOW_MS);
    recent.push(now);
    this.watchChanges = recent;
    if (recent.length < OSCILLATION_CHANGES) return false;
    const n = recent.length;
    this.watchChanges = undefined;
    this.lastError = new BackplaneError(
      'E_OSCILLATION',
      `oscillating: changed ${n} times in ${OSCILLATION_WINDOW_MS / 1000}s on nothing but its own watch events; something else keeps changing what it manages`,
      {
        hint: `find the other writer (another program, or a resource managing the same thing); held for ${OSCILLATION_HOLD_MS / 1000}s or until the graph changes`,
      },
    ).format();
    this.log.error(this.lastError);
    this.holdTimer = setTimeout(() => this.release(), OSCILLATION_HOLD_MS);
    this.holdTimer.unref();
    this.setState('failed');
    return true;
  }

  /** Re-evaluate (a neighbour's state changed). */
  wake(): void {
    this.step();
  }

  /** noop found changes it did not make: status() has `pending` (Engine.summary's wouldChange). */
  get wouldChange(): boolean {
    return this.noopResult !== undefined && !this.noopResult.converged;
  }

  status(): VertexStatus {
    return {
      id: this.id,
      state: this.state,
      changes: this.changeCount,
      runs: this.runs,
      ...(this.lastError !== undefined && this.state === 'failed' ? { error: this.lastError } : {}),
      ...(this.blockedBy !== undefined && this.state === 'blocked' ? { blockedBy: this.blockedBy } : {}),
      ...(this.noopResult !== undefined && !this.noopResult.converged
        ? { pending: this.noopResult.changes, ...(this.noopResult.diff !== undefined ? { diff: this.noopResult.diff } : {}) }
        : {}),
    };
  }

  /** Aborts in-flight work and the watch at once (the engine stopping); stop() then waits for them. */
  abort(reason: unknown): void {
    if (this.halted) return;
    this.halted = true;
    this.haltReason = reason;
    this.ac?.abort(reason);
    if (this.attached !== undefined) {
      this.attached = undefined;
      this.resource.detachWatch?.();
    }
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.timerPoll !== undefined) clearTimeout(this.timerPoll);
    if (this.watchTimer !== undefined) clearTimeout(this.watchTimer);
    if (this.holdTimer !== undefined) clearTimeout(this.holdTimer);
    const pause = this.pause;
    this.pause = undefined;
    if (pause !== undefined) {
      clearTimeout(pause.timer);
      pause.resolve();
    }
  }

  /** Stop watching and working; resolves when in-flight work has finished or aborted. */
  stop(reason: CloseReason): Promise<void> {
    return this.stopNow(reason) ?? Promise.resolve();
  }

  /**
   * stop(), without a promise when there is nothing to wait for (no run in flight, no watch, no close): the state is
   * 'stopped' on return. A one-shot run ends with every worker like that, and a promise chain each was most of its exit.
   */
  stopNow(reason: CloseReason): Promise<void> | undefined {
    // An Error (and its stack) only when not aborted already: the engine stopping aborted every worker at once.
    if (!this.halted) this.abort(new BackplaneError('E_ABORTED', reason === 'shutdown' ? 'agent stopping' : `resource ${reason}`));
    if (this.inflight === undefined && this.watching === undefined && this.resource.close === undefined) {
      this.setState('stopped');
      return undefined;
    }
    return this.stopAfterWork(reason);
  }

  private async stopAfterWork(reason: CloseReason): Promise<void> {
    await Promise.all([this.inflight, this.watching]);
    try {
      await this.resource.close?.(reason);
    } catch (err) {
      this.log.warn(`close failed: ${errorMessage(err)}`);
    }
    this.setState('stopped');
  }

  private setState(next: VertexState): void {
    if (next === this.state) return;
    const prev = this.state;
    this.state = next;
    if (next === 'converged') this.wasConverged = true;
    else if (next === 'failed' || next === 'blocked') this.wasConverged = false;
    this.host.stateChanged(this, prev);
  }

  /** Starts a run when one is owed and allowed; otherwise settles the state that says why not. */
  private step(): void {
    if (this.stepping) {
      this.stepAgain = true;
      return;
    }
    this.stepping = true;
    try {
      do {
        this.stepAgain = false;
        this.stepOnce();
      } while (this.stepAgain);
    } finally {
      this.stepping = false;
    }
  }

  private stepOnce(): void {
    if (this.halted || this.inflight !== undefined || this.timer !== undefined) return;
    if (!this.dirty || !this.watchReady || this.holdTimer !== undefined) {
      if (this.dirty && this.holdTimer === undefined && this.state !== 'pending') this.setState('pending');
      return;
    }
    const gate = this.host.dependencyGate(this);
    if (gate.gate === 'blocked') {
      this.blockedBy = gate.by;
      this.setState('blocked');
      return;
    }
    if (gate.gate === 'wait') {
      this.setState('pending');
      return;
    }
    const wait = this.limiter?.waitMs() ?? 0;
    if (wait > 0) {
      // Over its rate limit: wait for a token, then look at the gate again (it may have changed meanwhile).
      // Events arriving now only keep `dirty` set, so they all become the one run after the wait.
      this.log.debug(`rate limit: next run in ${formatDuration(wait)}`);
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.step();
      }, wait);
      return;
    }
    this.limiter?.take();
    const run = this.runOnce();
    this.inflight = run;
    void run.finally(() => {
      if (this.inflight === run) this.inflight = undefined;
      this.step();
    });
  }

  /** Waits `ms` (a retry delay); false when stop() ended the wait. */
  private sleep(ms: number): Promise<boolean> {
    if (this.halted) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        this.pause = undefined;
        resolve(!this.halted);
      }, ms);
      this.pause = { timer, resolve: () => resolve(false) };
    });
  }

  private async runOnce(): Promise<void> {
    this.dirty = false;
    const watchOnly = !this.outsideCause;
    this.outsideCause = false;
    const driftOnly = !this.nonDriftCause && this.wasConverged;
    this.nonDriftCause = false;
    const refresh = this.refresh;
    this.refresh = false;
    this.setState('running');
    let release: (() => void) | undefined;
    const started = performance.now();
    /** When the check began (after waiting for a slot), for the run's duration in the metrics. */
    let t0: number | undefined;
    try {
      const slot = this.host.acquire(this);
      release = typeof slot === 'function' ? slot : await slot;
      const apply = !this.host.noop && !this.vertex.meta.noop;
      t0 = performance.now();
      const result = await this.resource.checkApply(new RunContext(this, apply, refresh));
      if (this.metrics !== undefined) {
        const s = (performance.now() - t0) / 1000;
        if (!result.converged && apply) {
          this.metrics.applied(s, 'changed');
          if (driftOnly) this.metrics.repaired();
        } else this.metrics.checked(s);
      }
      this.runs++;
      this.attempts = 0;
      this.lastError = undefined;
      if (!result.converged) {
        this.changeCount++;
        if (apply) {
          for (const c of result.changes) this.log.info(c);
          this.noopResult = undefined;
        } else {
          this.noopResult = result;
          for (const c of result.changes) this.log.info(`would change: ${c}`, result.diff === undefined ? undefined : { diff: result.diff });
        }
      } else {
        this.noopResult = undefined;
      }
      this.log.debug(`checked in ${formatDuration(performance.now() - started)}`, { converged: result.converged });
      // Tell dependents before settling, so the engine never observes a settled graph with work still owed.
      if (!result.converged && apply) this.host.propagateChange(this);
      if (!result.converged && apply && watchOnly && this.oscillating()) return;
      // An event that arrived during the run owes another run: stay active so nobody sees a false settle.
      this.setState(this.dirty ? 'pending' : 'converged');
    } catch (err) {
      if (this.halted) return;
      if (t0 !== undefined) this.metrics?.applied((performance.now() - t0) / 1000, 'failed');
      this.runs++;
      this.attempts++;
      // Printed under this resource's id (its log lines, the run summary): the message need not name it again.
      this.lastError = errorMessage(err, this.id);
      const { retry, delay } = this.vertex.meta;
      if (retry === -1 || this.attempts <= retry) {
        this.setState('retrying');
        this.log.warn(
          `failed (attempt ${this.attempts}${retry === -1 ? '' : ` of ${retry + 1}`}), retrying in ${formatDuration(delay)}: ${this.lastError}`,
        );
        if (!(await this.sleep(delay))) return;
        this.dirty = true;
        return;
      }
      this.log.error(`failed: ${this.lastError}`);
      if (this.dirty) {
        this.attempts = 0; // the world changed while we failed: that may be the fix, so try again afresh
        this.setState('pending');
      } else {
        this.setState('failed');
      }
    } finally {
      release?.();
    }
  }

  private startWatch(): void {
    if (!this.host.watch) {
      this.markReady();
      return;
    }
    const poll = this.vertex.meta.poll;
    if (poll > 0) {
      this.markReady();
      const tick = (): void => {
        this.timerPoll = setTimeout(() => {
          this.timerPoll = undefined;
          if (this.halted) return;
          this.poke(false, 'poll', false, true);
          tick();
        }, poll);
      };
      tick();
      return;
    }
    if (this.resource.attachWatch !== undefined && this.resource.detachWatch !== undefined) {
      this.attachWatch(500);
      return;
    }
    if (this.resource.watch === undefined) {
      this.markReady();
      return;
    }
    this.runWatch(500);
  }

  /**
   * The watch of a kind that has attachWatch/detachWatch (files): no signal or promise per worker; abort() detaches
   * it, so an idle worker stops synchronously (stopNow). `attached` also tells a failure of this attachment from a
   * late one of an attachment given up already.
   */
  private attached: WatchHooks | undefined;

  private attachWatch(backoff: number): void {
    const hooks = new WatchHooks(this, backoff);
    this.attached = hooks;
    try {
      this.resource.attachWatch?.(hooks);
    } catch (err) {
      this.onWatchFailed(hooks, err);
    }
  }

  /** WatchHooks.ready: the attachment is still the current one. */
  onWatchReady(hooks: WatchHooks): void {
    if (this.attached === hooks) this.markReady();
  }

  /** WatchHooks.changed. */
  onWatchChanged(hooks: WatchHooks, reason: string): void {
    if (this.attached !== hooks) return;
    this.metrics?.watchEvent();
    this.poke(false, reason, true);
  }

  /** WatchHooks.failed: detached, and attached again after the back-off (as a watch() that ends or fails is). */
  onWatchFailed(hooks: WatchHooks, err: unknown): void {
    if (this.attached !== hooks || this.halted) return;
    this.attached = undefined;
    this.resource.detachWatch?.();
    this.log.warn(`watch failed, restarting in ${formatDuration(hooks.backoff)}: ${errorMessage(err)}`);
    this.watchTimer = setTimeout(() => {
      this.watchTimer = undefined;
      if (this.halted) return;
      // Changes may have been missed while the watch was down.
      this.poke(false, 'watch restarted');
      this.attachWatch(Math.min(hooks.backoff * 2, WATCH_RESTART_MAX_MS));
    }, hooks.backoff);
  }

  private timerPoll: NodeJS.Timeout | undefined;

  /** Runs the resource's watch; one that ends or fails before stop() is restarted after a growing back-off. */
  private runWatch(backoff: number): void {
    const signal = this.signal;
    let watch: Promise<void>;
    try {
      watch =
        this.resource.watch?.({
          signal,
          ready: () => this.markReady(),
          changed: (reason) => {
            this.metrics?.watchEvent();
            this.poke(false, reason, true);
          },
          log: this.resourceLog(),
        }) ?? Promise.resolve();
    } catch (err) {
      watch = Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    this.watching = watch.then(
      () => {
        if (signal.aborted) return;
        this.log.warn('watch ended unexpectedly; restarting it');
        this.restartWatch(backoff);
      },
      (err: unknown) => {
        if (signal.aborted) return;
        this.log.warn(`watch failed, restarting in ${formatDuration(backoff)}: ${errorMessage(err)}`);
        this.restartWatch(backoff);
      },
    );
  }

  private restartWatch(backoff: number): void {
    this.watching = undefined;
    this.watchTimer = setTimeout(() => {
      this.watchTimer = undefined;
      if (this.halted) return;
      // Changes may have been missed while the watch was down.
      this.poke(false, 'watch restarted');
      this.runWatch(Math.min(backoff * 2, WATCH_RESTART_MAX_MS));
    }, backoff);
  }

  private markReady(): void {
    if (this.watchReady) return;
    this.watchReady = true;
    this.step();
  }
}

/**
 * A check/apply's context, its signal and log made only when the resource asks for them (see Worker.ac, Worker.logger):
 * one small object per run, no closures.
 */
class RunContext implements CheckApplyContext {
  constructor(
    private readonly w: Worker,
    readonly apply: boolean,
    readonly refresh: boolean,
  ) {}

  get log(): ResourceLog {
    return this.w.resourceLog();
  }

  get signal(): AbortSignal {
    return this.w.signal;
  }

  get aborted(): boolean {
    return this.w.stopped;
  }
}

/** What an attached watch reports through (Resource.attachWatch): one small object per attachment, no closures. */
class WatchHooks implements AttachedWatchContext {
  constructor(
    private readonly w: Worker,
    readonly backoff: number,
  ) {}

  ready(): void {
    this.w.onWatchReady(this);
  }
  changed(reason: string): void {
    this.w.onWatchChanged(this, reason);
  }
  failed(err: unknown): void {
    this.w.onWatchFailed(this, err);
  }
}
