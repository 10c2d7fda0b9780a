import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BackplaneError } from '../../errors.js';
import type { ResourceId } from '../../graph/ids.js';
import { formatDuration } from '../../util/duration.js';
import type { SvcParams } from '../svc-schema.js';
import type { CloseReason, ResourceLog, ResourceWorld } from '../types.js';
import { cgroupMembers, existingCgroup, placeInCgroup, removeCgroup, setupCgroup, signalCgroup, type SvcCgroup } from './cgroup.js';
import { HealthMonitor, makeProbe } from './health.js';
import { clearFenceMarker, describeStale, fencedError, fenceMarkerPath, staleAge, takeFenceMarker, WATCHDOG_POLL_MS, whenFresh } from './fence.js';
import { dropSpareFifos } from './logger.js';
import { resolveIdentity } from './identity.js';
import { fileSize, prepareLogFile, rotateIfNeeded, tailLines } from './logfile.js';
import { adoptProc, describeExit, disposeOutput, groupMembers, isFailure, loadSpawn, LogFileError, prepareOutput, signalGroup, signalPid, spawnProc, type ExitInfo, type PreparedOutput, type Proc, type SpawnSpec } from './proc.js';
import { clearRecord, readRecord, writeRecord } from './record.js';
import { RestartPolicy } from './restart-policy.js';
import { runCommand } from './run-command.js';
import { sha256Hex } from '../../util/hash.js';

/**
 * One per svc resource: owns the process from start to exit and restarts it on its own — from the child's 'exit'
 * event, at once or after a backoff — without waiting for the engine. checkApply asks it for a state (running,
 * stopped, restarted, reloaded) and waits until it is reached; the supervisor reports everything it does on its own
 * (exits, restarts, health, crash loops) through the watch's changed(), and the next checkApply reports it as a change.
 *
 * Phases:
 *   idle       no process (never started, stopped, or it exited while nobody asked for it to run)
 *   running    a process is up (spawned by us, or adopted from an earlier agent)
 *   stopping   a stop we asked for is in progress
 *   backoff    it exited on its own; a restart is scheduled
 *   crash-loop too many failures in the window; no more restarts until a fresh start (notify or new definition)
 *   done       it exited 0 and the restart policy says that is the end (on-failure, never)
 *   failed     it failed and the restart policy says not to restart (never)
 *   fenced     the fence's heartbeat is stale: no process, and none is started until it is fresh (fence.ts)
 */
export type Phase = 'idle' | 'running' | 'stopping' | 'backoff' | 'crash-loop' | 'done' | 'failed' | 'fenced';

export interface Attempt {
  readonly proc: Proc;
  /** Byte offset in the stderr file where this process's output starts. */
  readonly stderrFrom: number;
  health: HealthMonitor | undefined;
  /** Running and, with a health check, healthy at least once. */
  up: boolean;
  upAt: number | undefined;
  /** We are stopping it on purpose: its exit is not a failure. */
  stopRequested: boolean;
  /** We killed it for being unhealthy: its exit is a failure, for this reason. */
  killedFor: string | undefined;
  /** Why it ended, once it has. */
  ended: string | undefined;
}

interface Failure {
  readonly why: string;
  readonly stderrFrom: number;
}

const STOP_POLL_MS = 25;
/** After SIGKILL, how long to wait for the exit before reporting anyway (a process stuck in the kernel cannot die). */
const KILL_WAIT_MS = 2000;
const TAIL_LINES = 10;
const OUTPUT_WAIT_MS = 1000;
/**
 * A fenced process's logger (its watchdog) exits only after the process is gone; when the process's exit has not
 * come this long after the logger's, the watchdog died under a running process.
 */
const WATCHDOG_GONE_MS = 2000;
const SILENT: ResourceLog = { change: () => undefined, info: () => undefined, warn: () => undefined, debug: () => undefined };

export class Supervisor {
  phase: Phase = 'idle';
  current: Attempt | undefined;
  private supervising = false;
  private closed = false;
  /** A live process that runs an older definition (found at attach): replaced by the next applying check. */
  private stale: Proc | undefined;
  private attaching: Promise<void> | undefined;
  /** The output readied for the first start (prepareStart); resolved to undefined once taken or not made. */
  private prepared: Promise<PreparedOutput | undefined> | undefined;
  /** The cgroups prepareStart set up with that output. */
  private cgroupReady: SvcCgroup | undefined;
  private dir = '';
  private restartTimer: NodeJS.Timeout | undefined;
  private leftover: Proc | undefined;
  private restartAt = 0;
  private lastFailure: Failure | undefined;
  private crashLoopFailures = 0;
  private events: string[] = [];
  private readonly waiters = new Set<() => void>();
  private reporter: ((reason: string) => void) | undefined;
  private log: ResourceLog = SILENT;
  private ops: Promise<unknown> = Promise.resolve();
  /** The latest process's logger: resolves once all its output is in the files. */
  private output: Promise<void> | undefined;
  private cgroup: SvcCgroup | undefined;
  private limitsChecked = false;
  private readonly warned = new Set<string>();
  /** While fenced: aborts the wait for a fresh heartbeat. */
  private fenceWait: AbortController | undefined;
  private readonly policy: RestartPolicy;
  readonly specHash: string;

  constructor(
    readonly id: ResourceId,
    readonly params: SvcParams,
    private readonly world: ResourceWorld,
  ) {
    this.policy = new RestartPolicy({ ...params.backoff, ...params.crashLoop });
    // What a running process cannot pick up without a restart; a change of anything else (health, limits, backoff)
    // keeps an adopted process. The fence is given to the watchdog at the start, so it is in; without a fence the
    // key is left out and the hash stays what it was before fences existed.
    const { cmd, env, cwd, user, group, fence } = params;
    this.specHash = sha256Hex(JSON.stringify({ cmd, env, cwd, user, group, stdout: params.log.stdout, stderr: params.log.stderr, fence })).slice(0, 16);
  }

  get stdoutPath(): string {
    return this.params.log.stdout ?? join(this.dir, 'stdout.log');
  }

  get stderrPath(): string {
    return this.params.log.stderr ?? join(this.dir, 'stderr.log');
  }

  get stalePid(): number | undefined {
    return this.stale?.pid;
  }

  setLog(log: ResourceLog): void {
    this.log = log;
  }

  /** Where to report what the supervisor does on its own (the watch's changed); undefined when nobody listens. */
  setReporter(r: ((reason: string) => void) | undefined): void {
    this.reporter = r;
  }

  /** Finds the process an earlier agent (or supervisor object) left running and adopts it. Idempotent. */
  attach(): Promise<void> {
    this.attaching ??= this.doAttach().catch((err: unknown) => {
      this.attaching = undefined;
      throw err;
    });
    return this.attaching;
  }

  private async doAttach(): Promise<void> {
    this.dir = await this.world.stateDir(this.id);
    const rec = await readRecord(this.dir);
    if (rec === undefined || this.current !== undefined) return;
    const proc = await adoptProc(rec.pid, rec.starttime, rec.startedAt);
    if (proc === undefined) {
      this.log.debug(`recorded pid ${rec.pid} is gone`);
      await clearRecord(this.dir);
      return;
    }
    if (rec.specHash !== this.specHash) {
      this.log.info(`pid ${rec.pid} runs an older definition; it will be replaced`);
      this.stale = proc;
      return;
    }
    this.log.info(`adopted pid ${proc.pid} (running for ${formatDuration(Date.now() - proc.startedAt)})`);
    this.begin(this.attempt(proc, await fileSize(this.stderrPath)));
  }

  /** From now on, keep it running: restart on exit, check health, rotate logs. */
  supervise(): void {
    this.supervising = true;
    const a = this.current;
    if (a !== undefined && a.health === undefined && !a.up) this.startHealth(a);
  }

  /**
   * An adopted process gets the current limits (they may have changed while no agent ran; a changed limit does not
   * need a restart). Once per supervisor: its own starts apply them anyway.
   */
  async applyLimitsToAdopted(): Promise<void> {
    const a = this.current;
    if (this.limitsChecked || a === undefined || this.params.limits === undefined) return;
    this.limitsChecked = true;
    this.cgroup = await setupCgroup(this.id, this.dir, this.params.limits, { warn: (m) => this.warnOnce(m), debug: (m) => this.log.debug(m) });
    const problems = await placeInCgroup(this.cgroup, a.proc.pid);
    if (problems.length > 0) this.warnOnce(`cannot put pid ${a.proc.pid} into its cgroups, so limits do not apply: ${problems.join('; ')}`);
  }

  /** Stop restarting (state: stopped). */
  unsupervise(): void {
    this.supervising = false;
    this.cancelRestart();
    this.stopFenceWait();
    if (this.phase === 'backoff' || this.phase === 'crash-loop' || this.phase === 'done' || this.phase === 'failed' || this.phase === 'fenced') this.setPhase('idle');
  }

  /**
   * A notify or a new definition: forget past failures, leave crash-loop/done/failed so the process may start.
   * Not 'fenced': nothing but a fresh heartbeat lifts a fence.
   */
  freshStart(): void {
    this.policy.clear();
    this.cancelRestart();
    if (this.phase === 'backoff' || this.phase === 'crash-loop' || this.phase === 'done' || this.phase === 'failed') this.setPhase('idle');
  }

  /** What the supervisor did on its own since the last call: changes for the next checkApply to report. */
  takeEvents(): string[] {
    const e = this.events;
    this.events = [];
    return e;
  }

  /** Resolves at the next phase or health change (or abort). */
  waitChange(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal.aborted) {
        resolve();
        return;
      }
      const done = (): void => {
        signal.removeEventListener('abort', done);
        this.waiters.delete(done);
        resolve();
      };
      this.waiters.add(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  /** Until this process is up (healthy, with a health check) or has ended. */
  async waitUp(a: Attempt, signal: AbortSignal): Promise<'up' | 'ended'> {
    for (;;) {
      if (a.ended !== undefined || this.current !== a) return 'ended';
      if (a.up) return 'up';
      await this.waitChange(signal);
      if (signal.aborted) throw new BackplaneError('E_ABORTED', `aborted while waiting for pid ${a.proc.pid} to become healthy`, { resource: this.id });
    }
  }

  // ---- operations (serialized: checkApply and the restart timer never interleave a start with a stop) ----------

  start(signal: AbortSignal): Promise<Attempt> {
    return this.serial(() => {
      if (signal.aborted) throw new BackplaneError('E_ABORTED', 'aborted before the process was started', { resource: this.id });
      if (this.current !== undefined) return Promise.resolve(this.current);
      return this.startLocked();
    });
  }

  /** Returns the pid stopped and whether it needed SIGKILL; undefined when nothing ran. */
  stop(signal: AbortSignal): Promise<{ pid: number; killed: boolean } | undefined> {
    return this.serial(async () => {
      this.cancelRestart();
      const r = await this.stopLocked(signal);
      if (this.phase !== 'running') this.setPhase('idle');
      return r;
    });
  }

  restart(signal: AbortSignal): Promise<{ old: number | undefined; next: Attempt }> {
    return this.serial(async () => {
      this.cancelRestart();
      const old = await this.stopLocked(signal);
      return { old: old?.pid, next: await this.startLocked() };
    });
  }

  /** Stops a process that runs an older definition. Returns its pid, or undefined when there was none. */
  replaceStale(signal: AbortSignal): Promise<number | undefined> {
    return this.serial(async () => {
      const stale = this.stale;
      if (stale === undefined) return undefined;
      await this.terminate(stale, signal);
      stale.release();
      this.stale = undefined;
      await clearRecord(this.dir);
      await removeCgroup(await this.findCgroup());
      return stale.pid;
    });
  }

  /** Reloads the running process as configured; returns the change to report. */
  async reload(signal: AbortSignal): Promise<string> {
    const a = this.current;
    const how = this.params.reload;
    if (a === undefined || how === undefined) throw new Error('reload without a process or a reload method');
    if ('signal' in how) {
      signalPid(a.proc.pid, how.signal);
      return `reloaded (${how.signal} to pid ${a.proc.pid})`;
    }
    const spec = await this.spawnSpec();
    const o = await runCommand(how.cmd, { env: { ...spec.env, MAINPID: String(a.proc.pid) }, cwd: spec.cwd, timeoutMs: this.params.stopTimeout, signal });
    const what = how.cmd.join(' ');
    if (o.kind === 'exited' && o.code === 0) return `reloaded (${what})`;
    if (o.kind === 'aborted') throw new BackplaneError('E_ABORTED', `aborted while running the reload command ${what}`, { resource: this.id });
    const why =
      o.kind === 'spawn-error'
        ? `could not start: ${o.error.message}`
        : o.kind === 'timeout'
          ? `timed out after ${formatDuration(this.params.stopTimeout)}`
          : o.code !== null
            ? `exited with code ${o.code}`
            : `was killed by ${o.signal ?? 'a signal'}`;
    const output = o.kind === 'spawn-error' ? '' : o.output === '' ? '' : `\n${indent(o.output.split('\n').slice(-TAIL_LINES))}`;
    throw new BackplaneError('E_APPLY', `reload command ${what} ${why}${output}`, {
      resource: this.id,
      hint: 'run the reload command by hand; the process was left running as it was',
      retryable: true,
    });
  }

  /**
   * Stop supervising. `removed` from the graph: the process is stopped too. `replaced` by a new definition: it is
   * left for the new supervisor, which adopts it or replaces it. Agent `shutdown`: it keeps running for the next
   * agent to adopt (an agent upgrade must not take services down), unless onAgentExit is stop.
   */
  async close(reason: CloseReason): Promise<void> {
    this.closed = true;
    this.supervising = false;
    this.cancelRestart();
    this.stopFenceWait();
    this.reporter = undefined;
    // Whatever is in flight (finding the old process) finishes before the resource is gone.
    await this.attaching?.catch(() => undefined);
    const stop = reason === 'removed' || (reason === 'shutdown' && this.params.onAgentExit === 'stop');
    // Serialized: a start in flight finishes first, so nothing it spawns is left behind unsupervised.
    await this.serial(async () => {
      this.current?.health?.stop();
      if (stop && this.dir !== '') {
        const signal = AbortSignal.timeout(this.params.stopTimeout + KILL_WAIT_MS);
        if (this.stale !== undefined) await this.terminate(this.stale, signal);
        const cur = this.current;
        if (cur !== undefined) {
          cur.stopRequested = true;
          this.log.info(`stopping pid ${cur.proc.pid} (${reason === 'removed' ? 'removed from the graph' : 'onAgentExit: stop'})`);
          await this.terminate(cur.proc, signal);
        }
        await clearRecord(this.dir);
        await removeCgroup(await this.findCgroup());
        // The logger makes the next spares as it starts; once it has exited, none can appear after these are gone.
        await this.outputWritten();
        await dropSpareFifos(this.dir);
      }
      // Otherwise the spare log pipes stay for the next start of the process left running: by the next agent, or
      // by the supervisor that replaces this one.
      const prepared = await this.takePrepared();
      if (prepared !== undefined) disposeOutput(prepared);
      this.current?.proc.release();
      this.stale?.release();
    });
    this.bump();
  }


  // ---- errors for checkApply ------------------------------------------------------------------------------------

  async crashLoopError(): Promise<BackplaneError> {
    const f = this.lastFailure;
    const tail = f === undefined ? [] : await this.tail(f.stderrFrom);
    return new BackplaneError(
      'E_APPLY',
      `crash-looping: ${this.crashLoopFailures} failures in ${formatDuration(this.params.crashLoop.window)}; no more restarts; ` +
        `last exit: ${f?.why ?? 'unknown'}${stderrText(tail)}`,
      {
        resource: this.id,
        hint: `fix the cause (all output: ${this.stderrPath}), then notify ${this.id} or change its definition to start it again`,
      },
    );
  }

  /**
   * In phase 'fenced': the error to fail checkApply with while the heartbeat is still stale, or undefined when it
   * is fresh again (the phase is then idle, and the caller starts the process).
   */
  fenceError(): BackplaneError | undefined {
    const fence = this.params.fence;
    const age = staleAge(fence);
    if (fence !== undefined && age !== undefined) return fencedError(this.id, fence, age);
    this.leaveFenced();
    return undefined;
  }

  /** The process failed and restart: never (or on-failure for a clean exit is 'done', not an error). */
  async exitError(): Promise<BackplaneError> {
    const f = this.lastFailure;
    const tail = f === undefined ? [] : await this.tail(f.stderrFrom);
    return new BackplaneError('E_APPLY', `${f?.why ?? 'the process exited'} and restart is ${this.params.restart}${stderrText(tail)}`, {
      resource: this.id,
      hint: `notify ${this.id} or change its definition to start it again; restart: always or on-failure restarts it by itself`,
    });
  }

  /** A process ended before it was up. The supervisor is already restarting it (or has given up). */
  async attemptError(a: Attempt): Promise<BackplaneError> {
    if (this.phase === 'crash-loop') return this.crashLoopError();
    if (this.phase === 'failed') return this.exitError();
    const tail = await this.tail(a.stderrFrom);
    const wait = Math.max(0, this.restartAt - Date.now());
    const next = this.phase === 'backoff' ? (wait < 1 ? '; restarting now' : `; restarting in ${formatDuration(wait)}`) : '';
    const health = a.health?.lastFailure;
    return new BackplaneError(
      'E_APPLY',
      `${a.ended ?? `pid ${a.proc.pid} ended`} before it was up${health !== undefined && a.killedFor === undefined ? ` (last health check: ${health})` : ''}${next}${stderrText(tail)}`,
      { resource: this.id, hint: `see ${this.stderrPath}; the supervisor keeps restarting it until it crash-loops`, retryable: true },
    );
  }

  // ---- internals ------------------------------------------------------------------------------------------------

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.ops.then(fn);
    this.ops = run.catch(() => undefined);
    return run;
  }

  private setPhase(p: Phase): void {
    if (this.phase === p) return;
    this.phase = p;
    this.bump();
  }

  private bump(): void {
    const ws = [...this.waiters];
    this.waiters.clear();
    for (const w of ws) w();
  }

  private report(reason: string): void {
    this.reporter?.(reason);
  }

  private warnOnce(message: string): void {
    if (this.warned.has(message)) return;
    this.warned.add(message);
    this.log.warn(message);
  }

  private async spawnSpec(): Promise<SpawnSpec> {
    const p = this.params;
    const ident = await resolveIdentity(p.user, p.group);
    if ('problem' in ident) {
      throw new BackplaneError('E_APPLY', `cannot run ${p.cmd?.[0] ?? ''} as ${String(p.user ?? '')}${p.group !== undefined ? `:${String(p.group)}` : ''}: ${ident.problem}`, {
        resource: this.id,
        hint: 'create the user/group first (a user or group resource this svc requires), or fix user/group',
        retryable: true,
      });
    }
    const env: NodeJS.ProcessEnv = { ...process.env };
    if (ident.name !== undefined) Object.assign(env, { HOME: ident.home, USER: ident.name, LOGNAME: ident.name });
    Object.assign(env, p.env);
    // The schema requires cmd for state: running, the only state that starts anything.
    const [file, ...args] = p.cmd ?? [];
    if (file === undefined) throw new Error('svc: start without cmd');
    return { file, args, cwd: p.cwd ?? '/', env, uid: ident.uid, gid: ident.gid, userName: ident.name, stdoutPath: this.stdoutPath, stderrPath: this.stderrPath };
  }

  /** Creates the log files' directories, checks them (checkLogDir) and rotates a file already past maxSize. */
  private async readyLogs(stdoutPath: string, stderrPath: string): Promise<void> {
    const log = this.params.log;
    const dirsReady = new Set<string>();
    for (const path of new Set([stdoutPath, stderrPath])) {
      try {
        // Both logs are usually in one directory (by default the resource's state directory): checked once.
        if (!dirsReady.has(dirname(path))) await prepareLogFile(path);
        dirsReady.add(dirname(path));
        await rotateIfNeeded(path, log.maxSize, log.keep);
      } catch (err) {
        throw new BackplaneError('E_IO', `cannot prepare log file ${path}: ${(err as Error).message}`, {
          resource: this.id,
          cause: err,
          hint: 'fix log.stdout/log.stderr, or the permissions of their directory',
          retryable: true,
        });
      }
    }
  }

  /**
   * Readies the output of a start that is about to come, while the dependencies are still being applied: the log
   * files, the logger's pipes and the cgroups (the logger process itself starts after the service: startLogger).
   * Each is a few synchronous calls, done here rather than between the config file being written and the spawn. Only where
   * none of it can depend on the graph or on what runs: state running, no process of an earlier agent to adopt or
   * replace, both logs in the private state directory, no user or group (a dependency may create them), no fence
   * (its watchdog starts with its service). Anything that fails here is left to the start, which does it all again.
   */
  prepareStart(): void {
    const p = this.params;
    if (p.state !== 'running' || p.fence !== undefined || p.user !== undefined || p.group !== undefined) return;
    if (p.log.stdout !== undefined || p.log.stderr !== undefined || this.prepared !== undefined) return;
    this.prepared = this.serial(async () => {
      await this.attach();
      if (this.closed || this.current !== undefined || this.stale !== undefined) return undefined;
      await this.readyLogs(this.stdoutPath, this.stderrPath);
      // Its cgroups too (made, limits written): they hold nothing until the start puts the process in.
      this.cgroupReady = await setupCgroup(this.id, this.dir, p.limits, { warn: (m) => this.warnOnce(m), debug: (m) => this.log.debug(m) });
      loadSpawn();
      return prepareOutput({
        stdoutPath: this.stdoutPath,
        stderrPath: this.stderrPath,
        logRotation: { maxSize: p.log.maxSize, keep: p.log.keep, fifoDir: this.dir },
      });
    }).catch((err: unknown) => {
      this.log.debug(`could not ready the output ahead of the start (the start will): ${(err as Error).message}`);
      return undefined;
    });
  }

  /** The output prepareStart readied, once (a later start readies its own). */
  private async takePrepared(): Promise<PreparedOutput | undefined> {
    const prepared = this.prepared;
    this.prepared = Promise.resolve(undefined);
    return prepared;
  }

  private async startLocked(): Promise<Attempt> {
    const spec = await this.spawnSpec();
    // The previous process's logger must be done with the files before a new one writes and rotates them.
    await this.outputWritten();
    // The output made ahead for this start (prepareStart), or none: then the log files are readied here.
    const prepared = await this.takePrepared();
    if (prepared === undefined) await this.readyLogs(spec.stdoutPath, spec.stderrPath);
    let stderrFrom: number;
    const fence = this.params.fence;
    const log = this.params.log;
    try {
      stderrFrom = await fileSize(spec.stderrPath);
      const ready = prepared !== undefined ? this.cgroupReady : undefined;
      this.cgroupReady = undefined;
      this.cgroup = ready ?? (await setupCgroup(this.id, this.dir, this.params.limits, { warn: (m) => this.warnOnce(m), debug: (m) => this.log.debug(m) }));
      this.limitsChecked = true;
      // Anything still in the service's cgroup is what an earlier run left (an agent killed mid-stop, a crash loop
      // under an older agent); it would compete with the new process for ports and locks.
      await this.killStrays('left behind by an earlier run of this service');
      // The last moment before the spawn: whatever start asked (checkApply, a restart, the backoff timer), no process
      // starts while the heartbeat is stale.
      const age = staleAge(fence);
      if (fence !== undefined && age !== undefined) {
        this.enterFenced(age);
        throw fencedError(this.id, fence, age);
      }
      if (fence !== undefined) clearFenceMarker(this.dir);
    } catch (err) {
      if (prepared !== undefined) disposeOutput(prepared);
      throw err;
    }
    let proc: Proc;
    try {
      proc = await spawnProc({
        ...spec,
        cgroupProcs: this.cgroup.dirs.map((d) => join(d, 'cgroup.procs')),
        logRotation: { maxSize: log.maxSize, keep: log.keep, fifoDir: this.dir },
        fence:
          fence === undefined
            ? undefined
            : { heartbeat: fence.heartbeat, maxAgeMs: fence.maxAge, pollMs: WATCHDOG_POLL_MS, cgroup: this.cgroup.v2Dir, marker: fenceMarkerPath(this.dir) },
      }, prepared);
    } catch (err) {
      if (err instanceof LogFileError) {
        throw new BackplaneError('E_IO', err.message, { resource: this.id, cause: err, hint: 'fix log.stdout/log.stderr, or the permissions of their directory', retryable: true });
      }
      throw spawnError(err as NodeJS.ErrnoException, spec, this.id);
    }
    // Health checks start at once, beside the record's write and the cgroup check: a server ready within
    // milliseconds is then found so (the write took 7-28 ms of a cold start on a busy 2-core host). The start still
    // returns only once the record is written.
    const a = this.attempt(proc, stderrFrom);
    if (this.supervising) this.startHealth(a);
    // The record first: if the agent dies in the next milliseconds, the next one must still find this process.
    try {
      await writeRecord(this.dir, { pid: proc.pid, pgid: proc.pgid, starttime: proc.starttime, startedAt: proc.startedAt, specHash: this.specHash, argv: this.params.cmd ?? [] });
    } catch (err) {
      a.health?.stop();
      // A process no later agent could find must not run: it would be started twice.
      signalGroup(proc.pgid, 'SIGKILL');
      throw new BackplaneError('E_IO', `cannot record pid ${proc.pid} in ${this.dir}, so it was stopped again: ${(err as Error).message}`, {
        resource: this.id,
        cause: err,
        retryable: true,
      });
    }
    // The process joined its cgroups itself before running anything (see WRAPPER in proc.ts); this only confirms
    // it, and says why when it could not.
    const problems = await placeInCgroup(this.cgroup, proc.pid);
    if (problems.length > 0) {
      if (this.params.limits !== undefined) this.warnOnce(`cannot put the process into its cgroups, so limits do not apply: ${problems.join('; ')}`);
      else this.log.debug(`cannot put the process into its tracking cgroup: ${problems.join('; ')}`);
    }
    this.log.debug(`started pid ${proc.pid}`, { pid: proc.pid });
    return this.begin(a);
  }

  /**
   * Until the latest process's logger has written everything and exited (it does once the process and all it forked
   * are gone), for at most OUTPUT_WAIT_MS: a leftover still holding the pipe must not stall errors or restarts.
   */
  private async outputWritten(): Promise<void> {
    if (this.output !== undefined) await settledWithin(this.output, OUTPUT_WAIT_MS);
  }

  private async tail(from: number): Promise<string[]> {
    await this.outputWritten();
    return tailLines(this.stderrPath, from, TAIL_LINES);
  }

  private attempt(proc: Proc, stderrFrom: number): Attempt {
    return {
      proc,
      stderrFrom,
      health: undefined,
      up: this.params.health === undefined,
      upAt: undefined,
      stopRequested: false,
      killedFor: undefined,
      ended: undefined,
    };
  }

  /** `a` is the current process from now on: its exit watched, its health checked while supervising. */
  private begin(a: Attempt): Attempt {
    const { proc } = a;
    this.output = proc.outputDone;
    this.current = a;
    if (this.supervising && a.health === undefined) this.startHealth(a);
    void proc.exited.then((exit) => this.onExit(a, exit));
    if (this.params.fence !== undefined && !proc.adopted) void this.guardWatchdog(a);
    this.setPhase('running');
    this.bump();
    return a;
  }

  private startHealth(a: Attempt): void {
    const h = this.params.health;
    if (h === undefined) return;
    const env = { ...process.env, ...this.params.env, MAINPID: String(a.proc.pid) };
    a.health = new HealthMonitor(h, makeProbe(h, env, this.params.cwd ?? '/'), {
      healthy: () => {
        a.up = true;
        a.upAt = Date.now();
        this.log.debug(`pid ${a.proc.pid} is healthy after ${formatDuration(a.upAt - a.proc.startedAt)}`);
        this.bump();
      },
      unhealthy: (reason) => void this.killUnhealthy(a, reason),
    });
  }

  private async killUnhealthy(a: Attempt, reason: string): Promise<void> {
    if (this.current !== a || a.stopRequested || !this.supervising) return;
    this.log.warn(`pid ${a.proc.pid} is unhealthy (${reason}); restarting it`);
    a.killedFor = `pid ${a.proc.pid} was unhealthy: ${reason}`;
    this.report(`unhealthy: ${reason}`);
    await this.serial(async () => {
      if (this.current !== a) return;
      this.setPhase('stopping');
      await this.terminate(a.proc, new AbortController().signal);
    });
  }

  /**
   * A fenced process must not run without its watchdog: if the logger dies under it (killed by hand, out of memory),
   * the process is restarted, which gives it a new one. (Only for processes this agent started: an adopted process's
   * logger is not our child, and its exit cannot be seen.)
   */
  private async guardWatchdog(a: Attempt): Promise<void> {
    await a.proc.outputDone;
    if (await settledWithin(a.proc.exited, WATCHDOG_GONE_MS)) return;
    if (this.current !== a || a.stopRequested || this.closed || !this.supervising) return;
    this.log.warn(`the fence watchdog of pid ${a.proc.pid} (its logger process) exited while the process runs; restarting it under a new watchdog`);
    a.killedFor = `pid ${a.proc.pid} lost its fence watchdog`;
    this.report('fence watchdog gone');
    await this.serial(async () => {
      if (this.current !== a) return;
      this.setPhase('stopping');
      await this.terminate(a.proc, new AbortController().signal);
    });
  }

  /** No process until the heartbeat is fresh; then idle, and the engine is told so that checkApply starts it. */
  private enterFenced(age: number): void {
    const fence = this.params.fence;
    if (fence === undefined) return;
    this.cancelRestart();
    this.setPhase('fenced');
    if (this.fenceWait !== undefined) return;
    this.log.warn(`${describeStale(fence, age)}; the process is not started until it is fresh`);
    const ac = new AbortController();
    this.fenceWait = ac;
    whenFresh(fence, ac.signal, () => {
      if (this.fenceWait !== ac) return;
      this.leaveFenced();
      this.log.info(`the heartbeat ${fence.heartbeat} is fresh again`);
      this.report('heartbeat fresh again');
    });
  }

  private isFenced(): boolean {
    return this.phase === 'fenced';
  }

  private leaveFenced(): void {
    this.stopFenceWait();
    if (this.phase === 'fenced') this.setPhase('idle');
  }

  private stopFenceWait(): void {
    this.fenceWait?.abort();
    this.fenceWait = undefined;
  }

  /**
   * A fenced service's exit while supervised: the watchdog's kill (its marker names this very process), or a failed
   * exit while the heartbeat is stale (the marker could not be written, or it died of something else meanwhile).
   * Either way not the service's failure: no crash counted, no backoff, no restart until the heartbeat is fresh.
   * A clean exit of its own goes through the restart policy as usual. Returns false for an ordinary exit.
   */
  private onFencedExit(a: Attempt, exit: ExitInfo): boolean {
    const fence = this.params.fence;
    if (fence === undefined) return false;
    const marker = takeFenceMarker(this.dir);
    const killed = marker !== undefined && marker.pid === a.proc.pid && marker.starttime === a.proc.starttime;
    const age = staleAge(fence);
    if (!killed && (age === undefined || !isFailure(exit))) return false;
    const seen = marker?.ageMs ?? age ?? Infinity;
    const why = `pid ${a.proc.pid} ${killed ? 'was killed by the fence watchdog' : 'exited while fenced'}: ${describeStale(fence, seen)}`;
    this.log.warn(why);
    this.events.push(why);
    if (age !== undefined) {
      this.enterFenced(age);
    } else {
      // Touched again between the kill and now: start it again at once (through checkApply, like any start).
      this.setPhase('idle');
    }
    this.report(why);
    return true;
  }

  private onExit(a: Attempt, exit: ExitInfo): void {
    a.health?.stop();
    a.proc.release();
    // Children of the dead main process may live on (nginx's workers keep its port): they go before a restart.
    this.leftover = a.proc;
    const ranMs = exit.at - a.proc.startedAt;
    const why = a.killedFor ?? `pid ${a.proc.pid} ${describeExit(exit)} after running ${formatDuration(ranMs)}`;
    a.ended = why;
    if (this.current !== a) return;
    this.current = undefined;
    if (a.stopRequested || this.closed) {
      this.bump();
      return;
    }
    if (!this.supervising) {
      this.setPhase('idle');
      this.log.info(why);
      this.report(why);
      this.bump();
      return;
    }
    if (a.killedFor === undefined && this.onFencedExit(a, exit)) return;
    const failed = a.killedFor !== undefined || isFailure(exit);
    const restart = this.params.restart === 'always' || (this.params.restart === 'on-failure' && failed);
    if (!restart) {
      if (failed) this.lastFailure = { why, stderrFrom: a.stderrFrom };
      this.setPhase(failed ? 'failed' : 'done');
      void this.serial(() => this.reapLeftovers());
      this.log.info(`${why}; not restarted (restart: ${this.params.restart})`);
      this.report(why);
      return;
    }
    this.afterFailure(why, ranMs, a.stderrFrom);
  }

  /** An exit, a failed health check or a failed start, with restart allowed: back off, or give up. */
  private afterFailure(why: string, ranMs: number, stderrFrom: number): void {
    this.lastFailure = { why, stderrFrom };
    const d = this.policy.onFailure(Date.now(), ranMs);
    if (d.action === 'crash-loop') {
      this.crashLoopFailures = d.failures;
      this.setPhase('crash-loop');
      // No restart follows, so nothing else would end what the dead process left (a worker holding its port).
      void this.serial(() => this.reapLeftovers());
      this.log.warn(`${why}; crash-looping (${d.failures} failures in ${formatDuration(this.params.crashLoop.window)}): no more restarts until notified or redefined`);
      this.report('crash-looping');
      return;
    }
    this.restartAt = Date.now() + d.delayMs;
    this.setPhase('backoff');
    this.log.warn(`${why}; restarting${d.delayMs > 0 ? ` in ${formatDuration(d.delayMs)}` : ''}`);
    this.restartTimer = setTimeout(() => void this.restartFromBackoff(why), d.delayMs);
    this.report(why);
  }

  private async restartFromBackoff(why: string): Promise<void> {
    this.restartTimer = undefined;
    await this.serial(async () => {
      if (this.closed || !this.supervising || this.phase !== 'backoff') return;
      await this.reapLeftovers();
      let a: Attempt;
      try {
        a = await this.startLocked();
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        // (A method, not this.phase: the compiler still thinks the phase is the 'backoff' checked above.)
        if (this.isFenced()) {
          // Not a failure of the service: the restart waits for a fresh heartbeat.
          this.report(message);
          return;
        }
        this.afterFailure(`could not restart: ${message}`, 0, await fileSize(this.stderrPath));
        return;
      }
      this.events.push(`restarted after ${why} (pid ${a.proc.pid})`);
      this.report(`restarted as pid ${a.proc.pid}`);
    });
  }

  /**
   * Like systemd's default KillMode: when the main process died, whatever else it left in its process group or
   * cgroup is stopped (stopSignal, then SIGKILL after stopTimeout) before a new main process starts, so a restart
   * never competes with orphans for ports, pid files or locks.
   */
  private async reapLeftovers(): Promise<void> {
    const proc = this.leftover;
    this.leftover = undefined;
    if (proc === undefined) return;
    const cg = await this.findCgroup();
    const orphans = (await groupMembers(proc.pgid)).length + (cg === undefined ? 0 : (await cgroupMembers(cg)).length);
    if (orphans === 0) return;
    this.log.info(`stopping ${orphans} process(es) left behind by pid ${proc.pid} before restarting`);
    await this.terminate(proc, new AbortController().signal);
  }

  /** SIGKILLs whatever is in the service's cgroup (only processes of this service are ever there) and waits for it. */
  private async killStrays(why: string): Promise<void> {
    const cg = await this.findCgroup();
    const pids = await cgroupMembers(cg);
    if (pids.length === 0) return;
    this.log.info(`killing ${pids.length} process(es) ${why}: ${pids.join(', ')}`);
    const deadline = Date.now() + KILL_WAIT_MS;
    do {
      await signalCgroup(cg, 'SIGKILL');
      await sleep(STOP_POLL_MS);
    } while ((await cgroupMembers(cg)).length > 0 && Date.now() < deadline);
  }

  private cancelRestart(): void {
    clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
  }

  private async stopLocked(signal: AbortSignal): Promise<{ pid: number; killed: boolean } | undefined> {
    const a = this.current;
    if (a === undefined) {
      // The main process is gone, but what it forked may not be.
      await this.reapLeftovers();
      await this.killStrays('left behind by an earlier process of this service');
      return undefined;
    }
    a.stopRequested = true;
    a.health?.stop();
    this.setPhase('stopping');
    const killed = await this.terminate(a.proc, signal);
    if (this.current === a) this.current = undefined;
    this.setPhase('idle');
    await clearRecord(this.dir);
    await removeCgroup(await this.findCgroup());
    return { pid: a.proc.pid, killed };
  }

  /**
   * stopSignal to the whole process group (and whatever else is in the service's cgroup), then SIGKILL after
   * stopTimeout — or at once when `signal` aborts (the agent is stopping: it must not hang on a stubborn process).
   * Resolves once the process and its group are gone; returns whether SIGKILL was needed.
   */
  private async terminate(proc: Proc, signal: AbortSignal): Promise<boolean> {
    const cg = await this.findCgroup();
    const sig = this.params.stopSignal;
    signalGroup(proc.pgid, sig);
    if (proc.pgid !== proc.pid) signalPid(proc.pid, sig);
    if (cg !== undefined) await signalCgroup(cg, sig);
    const deadline = Date.now() + this.params.stopTimeout;
    const gone = async (): Promise<boolean> => {
      if (!(await settledWithin(proc.exited, 0))) return false;
      if ((await groupMembers(proc.pgid)).length > 0) return false;
      return cg === undefined || (await cgroupMembers(cg)).length === 0;
    };
    // The leader's exit comes as an event (own child) or within one /proc poll (adopted); the group is checked after.
    await settledWithin(proc.exited, this.params.stopTimeout, signal);
    while (!signal.aborted && Date.now() < deadline) {
      if (await gone()) return false;
      await sleepOrAbort(STOP_POLL_MS, signal);
    }
    if (await gone()) return false;
    this.log.warn(`pid ${proc.pid} did not stop within ${formatDuration(this.params.stopTimeout)} of ${sig}${signal.aborted ? ' (or the agent is stopping)' : ''}; sending SIGKILL`);
    signalGroup(proc.pgid, 'SIGKILL');
    signalPid(proc.pid, 'SIGKILL');
    if (cg !== undefined) await signalCgroup(cg, 'SIGKILL');
    // SIGKILL is not instant either: the stop is done when the tree is gone, not when the signal was sent.
    // Again on each poll: without cgroup.kill (cgroup v1 only), a process forked between the listing and the kills
    // would otherwise survive.
    const killDeadline = Date.now() + KILL_WAIT_MS;
    while (Date.now() < killDeadline && !(await gone())) {
      await sleep(STOP_POLL_MS);
      if (cg !== undefined) await signalCgroup(cg, 'SIGKILL');
    }
    return true;
  }

  /** The service's cgroups: set up by this supervisor's start, or found where an earlier one left them. */
  private async findCgroup(): Promise<SvcCgroup> {
    this.cgroup ??= await existingCgroup(this.id, this.dir);
    return this.cgroup;
  }
}

function settledWithin(p: Promise<unknown>, ms: number, signal?: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (v: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      resolve(v);
    };
    const onAbort = (): void => finish(false);
    const timer = setTimeout(() => finish(false), ms);
    signal?.addEventListener('abort', onAbort, { once: true });
    void p.then(() => finish(true));
  });
}

function sleepOrAbort(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

function indent(lines: readonly string[]): string {
  return lines.map((l) => `  | ${l}`).join('\n');
}

function stderrText(tail: readonly string[]): string {
  return tail.length === 0 ? '; stderr was empty' : `; last stderr lines:\n${indent(tail)}`;
}

function spawnError(err: NodeJS.ErrnoException, spec: SpawnSpec, id: ResourceId): BackplaneError {
  // spawn reports a missing cwd as ENOENT of the program, which sends people looking in the wrong place.
  const hint =
    err.code === 'ENOENT'
      ? `check that ${spec.file} exists (or is on PATH) and that cwd ${spec.cwd} exists`
      : err.code === 'EACCES'
        ? `${spec.file} is not executable (by uid ${spec.uid ?? process.getuid?.() ?? '?'})`
        : err.code === 'EPERM'
          ? 'dropping to another user or group needs the agent to run as root'
          : undefined;
  return new BackplaneError('E_APPLY', `could not start ${spec.file}: ${err.message}`, { resource: id, hint, cause: err, retryable: true });
}
