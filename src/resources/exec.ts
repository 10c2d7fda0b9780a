import { spawn } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { StringDecoder } from 'node:string_decoder';
import { setTimeout as sleep } from 'node:timers/promises';
import { BackplaneError } from '../errors.js';
import type { ResourceId } from '../graph/ids.js';
import { watchPath } from '../util/dirwatch.js';
import { formatDuration } from '../util/duration.js';
import { execSchema, type Command, type ExecParams } from './exec-schema.js';
import { defineKind, type ResourceLog } from './types.js';

/**
 * Runs a command when its guards say it is needed (Puppet's exec, mgmt's exec). Every child is spawned in its own
 * process group and stays a direct child of this process, so a timeout or Ctrl-C can take down the whole tree it
 * started and nothing is left for PID 1 to reap (FACTS.md fact 5).
 */
export const execKind = defineKind({
  kind: 'exec',
  description: 'runs a command, guarded by creates/onlyif/unless/refreshOnly; watch.cmd and watch.files re-trigger it',
  get schema() {
    return execSchema();
  },
  refreshable: true,
  // What another host's export may choose here only when the collect rule takes it (see CollectPolicy).
  collect: {
    power: {
      cmd: 'the command root runs',
      shell: 'which shell runs the command',
      onlyif: 'a guard command root runs',
      unless: 'a guard command root runs',
      watch: 'a command root runs to watch, and which files trigger it',
      cwd: 'the directory the command runs in',
      env: "the command's environment (PATH, LD_PRELOAD)",
      creates: 'which path skips the command',
    },
  },
  create: (id, params) => ({
    checkApply: async ({ apply, refresh, signal, log }) => {
      throwIfAborted(signal, id);
      // refreshOnly and creates first: they cost nothing, and a guard command should not run when it cannot matter.
      if (params.refreshOnly && !refresh) {
        log.debug('refreshOnly and not refreshed: nothing to do');
        return CONVERGED;
      }
      if (params.creates !== undefined && (await pathExists(params.creates, id))) {
        log.debug(`${params.creates} exists: nothing to do`);
        return CONVERGED;
      }
      // Guards run in noop mode too: they only look, and without them noop would report a run that would not happen.
      if (params.onlyif !== undefined && !(await runGuard('onlyif', params.onlyif, params, id, signal, log))) {
        log.debug('onlyif failed: nothing to do');
        return CONVERGED;
      }
      if (params.unless !== undefined && (await runGuard('unless', params.unless, params, id, signal, log))) {
        log.debug('unless succeeded: nothing to do');
        return CONVERGED;
      }
      if (!apply) return { converged: false, changes: [`would run ${describeCommand(params.cmd, 200)}`] };
      const durationMs = await runMain(params, id, signal, log);
      return { converged: false, changes: [`ran ${describeCommand(params.cmd, 60)} (${formatDuration(durationMs)})`] };
    },
    watch: (ctx) => watchExec(params, ctx),
  }),
});

const CONVERGED = { converged: true, changes: [] } as const;

/** How long a terminated child gets before SIGKILL: a Ctrl-C must feel prompt, a timeout may be more patient. */
const ABORT_GRACE_MS = 1000;
const TIMEOUT_GRACE_MS = 2000;
/** After SIGKILL, how long to wait for the exit before reporting anyway (a child stuck in the kernel can't die). */
const KILL_WAIT_MS = 500;
/** A child that exits may leave a background grandchild holding its stdout; don't wait for that forever. */
const DRAIN_MS = 200;
const TAIL_LINES = 20;
const MAX_LINE = 8192;
const MAX_REASON = 200;
const WATCH_BACKOFF_MIN_MS = 1000;
const WATCH_BACKOFF_MAX_MS = 30_000;

// ---- check/apply -------------------------------------------------------------------------------------------------

async function runMain(params: ExecParams, id: ResourceId, signal: AbortSignal, log: ResourceLog): Promise<number> {
  const spec = toSpawnSpec(params.cmd, params.shell, params);
  const what = describeCommand(params.cmd, 60);
  const outcome = await runProcess(spec, {
    signal,
    timeoutMs: params.timeout,
    onSpawn: (pid) => log.debug(`started pid ${pid}: ${what}`, { pid }),
    onLine: (stream, line) => log.debug(`${stream}: ${line}`),
  });
  switch (outcome.kind) {
    case 'aborted':
      throw abortedError(id, what);
    case 'spawn-error':
      throw spawnError(outcome.error, spec, id);
    case 'timeout':
      throw new BackplaneError('E_TIMEOUT', `\`${what}\` timed out after ${formatDuration(params.timeout)} and was killed${tailText(outcome)}`, {
        resource: id,
        hint: 'raise timeout (0 = no limit) if the command needs longer, or find out why it hangs',
        retryable: true,
      });
    case 'exited':
      if (outcome.code === 0) return outcome.durationMs;
      throw new BackplaneError('E_APPLY', `\`${what}\` ${exitText(outcome)} after ${formatDuration(outcome.durationMs)}${tailText(outcome)}`, {
        resource: id,
        hint: 'run the command by hand, or with debug logging to see all of its output',
        retryable: true,
      });
  }
}

/** true when the guard command succeeded (exit 0). A guard that cannot even start is a configuration error. */
async function runGuard(
  name: 'onlyif' | 'unless',
  cmd: Command,
  params: ExecParams,
  id: ResourceId,
  signal: AbortSignal,
  log: ResourceLog,
): Promise<boolean> {
  const spec = toSpawnSpec(cmd, params.shell, params);
  const what = describeCommand(cmd, 60);
  const outcome = await runProcess(spec, {
    signal,
    timeoutMs: params.timeout,
    onSpawn: (pid) => log.debug(`${name}: started pid ${pid}: ${what}`, { pid }),
    onLine: (stream, line) => log.debug(`${name} ${stream}: ${line}`),
  });
  switch (outcome.kind) {
    case 'aborted':
      throw abortedError(id, what);
    case 'spawn-error':
      throw spawnError(outcome.error, spec, id, name);
    case 'timeout':
      throw new BackplaneError('E_TIMEOUT', `${name} command \`${what}\` timed out after ${formatDuration(params.timeout)} and was killed`, {
        resource: id,
        hint: 'a guard shares the timeout of its exec; raise timeout or make the guard faster',
        retryable: true,
      });
    case 'exited':
      log.debug(`${name}: \`${what}\` ${outcome.code === 0 ? 'succeeded' : exitText(outcome)}`);
      return outcome.code === 0;
  }
}

async function pathExists(path: string, id: ResourceId): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return false;
    // Guessing "missing" here would re-run a command that is meant to run once.
    throw new BackplaneError('E_IO', `cannot check creates path ${path}: ${(err as Error).message}`, { resource: id, cause: err, retryable: true });
  }
}

// ---- watch -------------------------------------------------------------------------------------------------------

interface WatchCtx {
  readonly signal: AbortSignal;
  ready(): void;
  changed(reason: string): void;
  readonly log: ResourceLog;
}

async function watchExec(params: ExecParams, ctx: WatchCtx): Promise<void> {
  const { signal, log } = ctx;
  let isReady = false;
  const ready = (): void => {
    if (isReady) return;
    isReady = true;
    ctx.ready();
  };
  const files = params.watch?.files ?? [];
  await Promise.all(files.map((path) => watchPath(path, (reason) => ctx.changed(reason), signal)));
  const cmd = params.watch?.cmd;
  if (cmd === undefined) {
    ready();
    await abortedPromise(signal);
    return;
  }
  const spec = toSpawnSpec(cmd, params.shell, params);
  const what = describeCommand(cmd, 60);
  let backoff = WATCH_BACKOFF_MIN_MS;
  let restarting = false;
  while (!signal.aborted) {
    const started = Date.now();
    const outcome = await runProcess(spec, {
      signal,
      timeoutMs: 0,
      // Leftovers of a dead watch command would pile up with every restart.
      killGroupOnExit: true,
      onSpawn: (pid) => {
        log.debug(`watch: started pid ${pid}: ${what}`, { pid });
        ready();
        // Whatever happened while the command was down went unseen: a spurious event is harmless, a missed one is not.
        if (restarting) ctx.changed('watch command restarted');
      },
      onLine: (stream, line) => {
        if (stream === 'stdout') ctx.changed(`watch: ${truncate(line, MAX_REASON)}`);
        else log.debug(`watch stderr: ${line}`);
      },
    });
    // A watch command that cannot start must not hold up the rest of the graph.
    ready();
    if (outcome.kind === 'aborted' || signal.aborted) return;
    if (Date.now() - started >= WATCH_BACKOFF_MAX_MS) backoff = WATCH_BACKOFF_MIN_MS;
    const why =
      outcome.kind === 'spawn-error'
        ? `could not start (${outcome.error.message})`
        : outcome.kind === 'exited'
          ? exitText(outcome)
          : 'timed out';
    log.warn(`watch command \`${what}\` ${why}; restarting in ${formatDuration(backoff)}`, outcome.kind === 'exited' ? { stderr: outcome.stderrTail.join('\n') } : {});
    try {
      await sleep(backoff, undefined, { signal });
    } catch {
      return;
    }
    backoff = Math.min(backoff * 2, WATCH_BACKOFF_MAX_MS);
    restarting = true;
  }
}

function abortedPromise(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', () => resolve(), { once: true });
  });
}

// ---- commands ----------------------------------------------------------------------------------------------------

interface SpawnSpec {
  readonly file: string;
  readonly args: readonly string[];
  readonly cwd: string | undefined;
  readonly env: NodeJS.ProcessEnv;
}

/** An argv array never goes through a shell, even with `shell` set; a string always does. */
function toSpawnSpec(cmd: Command, shell: boolean | string, params: Pick<ExecParams, 'cwd' | 'env'>): SpawnSpec {
  const env = { ...process.env, ...params.env };
  if (typeof cmd === 'string') return { file: typeof shell === 'string' ? shell : '/bin/sh', args: ['-c', cmd], cwd: params.cwd, env };
  const [file, ...args] = cmd;
  // The schema guarantees at least one element; an empty argv here is a caller bypassing it.
  if (file === undefined) throw new Error('exec: empty argv');
  return { file, args, cwd: params.cwd, env };
}

const SAFE_ARG = /^[\w@%+=:,./-]+$/;

/** The command as a person would type it, shortened to `max` characters for one-line reports. */
function describeCommand(cmd: Command, max: number): string {
  const text = typeof cmd === 'string' ? cmd : cmd.map((a) => (SAFE_ARG.test(a) ? a : `'${a.replaceAll("'", `'\\''`)}'`)).join(' ');
  return truncate(text.replace(/\s*\n\s*/g, '; '), max);
}

function truncate(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}

function exitText(o: { readonly code: number | null; readonly signal: NodeJS.Signals | null }): string {
  return o.code !== null ? `exited with code ${o.code}` : `was killed by signal ${o.signal ?? 'unknown'}`;
}

/** Most commands explain failure on stderr; some only on stdout, which is then better than nothing. */
function tailText(o: { readonly stderrTail: readonly string[]; readonly stdoutTail: readonly string[] }): string {
  if (o.stderrTail.length > 0) return `\nstderr (last ${o.stderrTail.length} lines):\n${indent(o.stderrTail)}`;
  if (o.stdoutTail.length > 0) return `\nstdout (last ${o.stdoutTail.length} lines, stderr was empty):\n${indent(o.stdoutTail)}`;
  return '';
}

function indent(lines: readonly string[]): string {
  return lines.map((l) => `  | ${l}`).join('\n');
}

function abortedError(id: ResourceId, what: string): BackplaneError {
  return new BackplaneError('E_ABORTED', `aborted; \`${what}\` was killed`, { resource: id });
}

function spawnError(err: NodeJS.ErrnoException, spec: SpawnSpec, id: ResourceId, guard?: string): BackplaneError {
  const prefix = guard === undefined ? '' : `${guard} command `;
  // spawn reports a missing cwd as ENOENT of the program, which sends people looking in the wrong place.
  const hint =
    err.code === 'ENOENT'
      ? spec.cwd !== undefined
        ? `check that ${spec.file} exists (or is on PATH) and that cwd ${spec.cwd} exists`
        : `check that ${spec.file} exists or is on PATH`
      : err.code === 'EACCES'
        ? `${spec.file} is not executable`
        : undefined;
  return new BackplaneError('E_APPLY', `${prefix}could not start ${spec.file}: ${err.message}`, { resource: id, hint, cause: err });
}

function throwIfAborted(signal: AbortSignal, id: ResourceId): void {
  if (signal.aborted) throw new BackplaneError('E_ABORTED', 'aborted before the command ran', { resource: id });
}

// ---- processes ---------------------------------------------------------------------------------------------------

type Stream = 'stdout' | 'stderr';

interface RunOptions {
  readonly signal: AbortSignal;
  /** 0 = no limit. */
  readonly timeoutMs: number;
  /** Terminate what is left of the process group once the command itself has exited. */
  readonly killGroupOnExit?: boolean;
  onSpawn?(pid: number): void;
  onLine(stream: Stream, line: string): void;
}

interface Tails {
  readonly stdoutTail: readonly string[];
  readonly stderrTail: readonly string[];
  readonly durationMs: number;
}

type RunOutcome =
  | ({ readonly kind: 'exited'; readonly code: number | null; readonly signal: NodeJS.Signals | null } & Tails)
  | ({ readonly kind: 'timeout' } & Tails)
  | { readonly kind: 'aborted' }
  | { readonly kind: 'spawn-error'; readonly error: NodeJS.ErrnoException };

/**
 * Runs one command to completion. Never rejects: every way it can end is an outcome, so callers cannot leave a
 * rejection unhandled. Resolves only once the child has exited (or, after SIGKILL, KILL_WAIT_MS has passed).
 */
function runProcess(spec: SpawnSpec, opts: RunOptions): Promise<RunOutcome> {
  if (opts.signal.aborted) return Promise.resolve({ kind: 'aborted' });
  return new Promise<RunOutcome>((resolve) => {
    const started = performance.now();
    // detached = setsid(): the child leads its own process group, so kill(-pid) reaches everything it started, and a
    // Ctrl-C on our terminal reaches us (who then decide) rather than the child directly.
    const child = spawn(spec.file, [...spec.args], {
      cwd: spec.cwd,
      env: spec.env,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const pid = child.pid;
    const tails: Record<Stream, string[]> = { stdout: [], stderr: [] };
    const onLine = (stream: Stream) => (line: string) => {
      const tail = tails[stream];
      tail.push(line);
      if (tail.length > TAIL_LINES) tail.shift();
      opts.onLine(stream, line);
    };
    const splitters = { stdout: new LineSplitter(onLine('stdout')), stderr: new LineSplitter(onLine('stderr')) };
    child.stdout.on('data', (chunk: Buffer) => splitters.stdout.write(chunk));
    child.stderr.on('data', (chunk: Buffer) => splitters.stderr.write(chunk));
    // A stream error would otherwise be an unhandled 'error' event and crash the process.
    child.stdout.on('error', () => undefined);
    child.stderr.on('error', () => undefined);

    let settled = false;
    let ending: 'timeout' | 'aborted' | undefined;
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    let killTimer: NodeJS.Timeout | undefined;
    let giveUpTimer: NodeJS.Timeout | undefined;
    let drainTimer: NodeJS.Timeout | undefined;
    let timeoutTimer: NodeJS.Timeout | undefined;

    /** Signal 0 only asks whether anything in the group is still alive. */
    const killGroup = (sig: NodeJS.Signals | 0): boolean => {
      if (pid === undefined) return false;
      try {
        process.kill(-pid, sig);
        return true;
      } catch {
        return false; // ESRCH: the whole group is gone already
      }
    };

    const terminate = (why: 'timeout' | 'aborted', graceMs: number): void => {
      if (ending !== undefined || settled) return;
      if (exit !== undefined) {
        // The command already finished (and that is what we report); only a grandchild holding the pipe is left.
        killGroup('SIGTERM');
        finish();
        return;
      }
      ending = why;
      killGroup('SIGTERM');
      killTimer = setTimeout(() => {
        killGroup('SIGKILL');
        giveUpTimer = setTimeout(finish, KILL_WAIT_MS);
      }, graceMs);
    };

    const onAbort = (): void => terminate('aborted', ABORT_GRACE_MS);

    const finish = (): void => {
      if (settled) return;
      settled = true;
      opts.signal.removeEventListener('abort', onAbort);
      clearTimeout(timeoutTimer);
      clearTimeout(drainTimer);
      clearTimeout(giveUpTimer);
      if (killTimer !== undefined) {
        // The leader is gone; if its group is too, the pending SIGKILL has nothing left to do. Otherwise let it fire
        // for the stragglers, without keeping this process alive just for that.
        if (exit !== undefined && !killGroup(0)) clearTimeout(killTimer);
        else killTimer.unref();
      }
      child.stdout.destroy();
      child.stderr.destroy();
      splitters.stdout.end();
      splitters.stderr.end();
      const done: Tails = { stdoutTail: tails.stdout, stderrTail: tails.stderr, durationMs: performance.now() - started };
      if (ending === 'aborted') resolve({ kind: 'aborted' });
      else if (ending === 'timeout') resolve({ kind: 'timeout', ...done });
      else if (exit !== undefined) resolve({ kind: 'exited', ...exit, ...done });
      else resolve({ kind: 'exited', code: null, signal: null, ...done });
    };

    child.on('error', (err: NodeJS.ErrnoException) => {
      // Only a failed spawn reaches here (we signal through process.kill, never child.kill).
      if (settled || exit !== undefined) return;
      settled = true;
      opts.signal.removeEventListener('abort', onAbort);
      clearTimeout(timeoutTimer);
      resolve({ kind: 'spawn-error', error: err });
    });
    child.on('exit', (code, sig) => {
      exit = { code, signal: sig };
      if (pid !== undefined) liveGroups.delete(pid);
      if (opts.killGroupOnExit === true) {
        killGroup('SIGTERM');
        setTimeout(() => killGroup('SIGKILL'), ABORT_GRACE_MS).unref();
      }
      drainTimer = setTimeout(finish, DRAIN_MS);
    });
    child.on('close', () => finish());

    if (pid === undefined) return; // spawn failed; 'error' follows
    trackGroup(pid);
    child.on('spawn', () => opts.onSpawn?.(pid));
    opts.signal.addEventListener('abort', onAbort, { once: true });
    if (opts.timeoutMs > 0) timeoutTimer = setTimeout(() => terminate('timeout', TIMEOUT_GRACE_MS), opts.timeoutMs);
  });
}

/**
 * Process groups whose leader is still running. Children live in their own sessions, so if this process dies
 * without aborting (a crash, process.exit) nothing else would stop them; the 'exit' hook is the last chance.
 */
const liveGroups = new Set<number>();
let exitHookInstalled = false;

function trackGroup(pid: number): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const pgid of liveGroups) {
        try {
          process.kill(-pgid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    });
  }
  liveGroups.add(pid);
}

/** Splits a byte stream into lines with bounded memory: an endless line is cut at MAX_LINE, the rest dropped. */
class LineSplitter {
  private readonly decoder = new StringDecoder('utf8');
  private pending = '';
  private skipping = false;

  constructor(private readonly emit: (line: string) => void) {}

  write(chunk: Buffer): void {
    this.feed(this.decoder.write(chunk));
  }

  end(): void {
    this.feed(this.decoder.end());
    if (this.pending !== '' && !this.skipping) this.line(this.pending);
    this.pending = '';
    this.skipping = false;
  }

  private feed(text: string): void {
    let start = 0;
    for (let nl = text.indexOf('\n'); nl !== -1; nl = text.indexOf('\n', start)) {
      if (!this.skipping) this.line(this.pending + text.slice(start, nl));
      this.pending = '';
      this.skipping = false;
      start = nl + 1;
    }
    if (this.skipping) return;
    this.pending += text.slice(start);
    if (this.pending.length > MAX_LINE) {
      this.line(this.pending);
      this.pending = '';
      this.skipping = true;
    }
  }

  private line(raw: string): void {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    this.emit(line.length > MAX_LINE ? `${line.slice(0, MAX_LINE)} […]` : line);
  }
}
