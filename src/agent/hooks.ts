import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage } from '../errors.js';
import { resolveIdentity } from '../resources/svc/identity.js';
import { groupMembers, resolveProgram, signalGroup, wrappedArgv } from '../resources/svc/proc.js';
import { formatDuration } from '../util/duration.js';
import { instanceContext, type InstanceApiEnv, type InstanceHost } from '../scheduler/render.js';
import type { Alloc, HookName, ServiceSpec } from '../scheduler/types.js';

/**
 * A service's hook (spec.hooks.afterStart, beforeStop, beforePromote), run by the agent for one of its instances, in
 * that instance's context: as the task's user and group (with the user's supplementary groups, as the svc kind does),
 * in its cwd, with its environment (the task's env, INSTANCE_INDEX, INSTANCE_ID, SERVICE_NAME, SERVICE_VERSION,
 * PORT_<NAME>, exactly what render.ts gives its svc) plus HOOK=<name>. Not in the instance's cgroup: a hook is not the
 * service, and the svc's stop must not take a hook with it (nor a hook count against the service's memory).
 *
 * The hook leads a process group of its own; at its timeout the whole group gets SIGTERM, and SIGKILL after
 * KILL_GRACE_MS. Whatever it leaves behind in its group when it exits is killed too, so a hook never outlives its run
 * (and never holds its output pipes open). The output kept is the last OUTPUT_BYTES of stdout and stderr together,
 * followed by one line saying how it ended: `exit 3`, `killed by SIGSEGV`, `timed out after 30s`.
 *
 * Never throws for a failing hook: a program that does not exist, a user that does not, a cwd that is missing are
 * failed results that say so.
 */

export interface HookRunOptions {
  readonly spec: ServiceSpec;
  readonly alloc: Omit<Alloc, 'status'>;
  readonly host: InstanceHost;
  readonly hook: HookName;
  /**
   * Instead of the hook: one of the spec's named actions (spec.actions), run the same way with ACTION=<name> and
   * ACTION_ID=<id> in its environment (an application backplane asked for it: react's `exec`).
   */
  readonly action?: { readonly name: string; readonly id: string };
  /** Aborting kills the hook's process group at once; the result is then { ok: false, aborted: true }. */
  readonly signal?: AbortSignal;
  /** The instance API's env for this alloc (BACKPLANE_API, BACKPLANE_TOKEN), as its svc has it. */
  readonly api?: InstanceApiEnv;
}

export interface HookOutcome {
  readonly ok: boolean;
  /** The last OUTPUT_BYTES of its output, then how it ended (or why it could not start). */
  readonly output: string;
  /** The run was aborted (the alloc is gone, the agent stops): nothing to report. */
  readonly aborted?: boolean;
}

export const OUTPUT_BYTES = 4096;
/** After the timeout's SIGTERM, how long the hook's process group has before SIGKILL. */
export const KILL_GRACE_MS = 2000;
/** After SIGKILL, how long to wait for the group to be gone before giving up on it (a process stuck in the kernel). */
const KILL_WAIT_MS = 2000;
const POLL_MS = 25;

export async function runHook(opts: HookRunOptions): Promise<HookOutcome> {
  const { spec, alloc, host, hook, action } = opts;
  const def = action === undefined ? spec.hooks?.[hook] : spec.actions?.[action.name];
  // An action the spec does not name is refused, never run: only what an operator signed may run.
  if (def === undefined) return action === undefined ? { ok: true, output: `no ${hook} hook` } : { ok: false, output: `the spec of ${spec.name} has no action "${action.name}"` };
  const signal = opts.signal ?? new AbortController().signal;
  if (signal.aborted) return { ok: false, output: 'aborted', aborted: true };
  const fail = (why: string): HookOutcome => ({ ok: false, output: why.slice(0, 2000) });
  let ctx;
  try {
    ctx = instanceContext(spec, alloc, host, opts.api === undefined ? {} : { api: opts.api });
  } catch (err) {
    return fail(`cannot render the instance's environment: ${errorMessage(err)}`);
  }
  const ident = await resolveIdentity(ctx.user, ctx.group).catch((err: unknown) => ({ problem: errorMessage(err) }));
  if ('problem' in ident) return fail(`cannot run as ${String(ctx.user ?? '')}${ctx.group !== undefined ? `:${String(ctx.group)}` : ''}: ${ident.problem}`);
  const env: NodeJS.ProcessEnv = { ...process.env };
  if (ident.name !== undefined) Object.assign(env, { HOME: ident.home, USER: ident.name, LOGNAME: ident.name });
  Object.assign(env, ctx.env, action === undefined ? { HOOK: hook } : { ACTION: action.name, ACTION_ID: action.id });
  const cwd = ctx.cwd ?? '/';
  const [file, ...args] = def.cmd;
  if (file === undefined) return fail('the hook has no command');
  // spawn reports a missing cwd as ENOENT of the program: say which it is.
  const dir = await stat(cwd).catch(() => undefined);
  if (dir?.isDirectory() !== true) return fail(`cannot start ${file}: its cwd ${cwd} is not a directory`);
  let program: string;
  try {
    program = resolveProgram(file, env, cwd);
  } catch (err) {
    return fail(`cannot start ${file}: ${errorMessage(err)}`);
  }
  // The svc kind's way to drop to the user (setpriv with the user's groups); no cgroups to join (see the top).
  const argv = wrappedArgv(program, { file, args, cwd, env, uid: ident.uid, gid: ident.gid, userName: ident.name, stdoutPath: '', stderrPath: '' });
  return run(argv, { env, cwd, gid: ident.uid === undefined ? ident.gid : undefined, timeoutMs: def.timeoutMs, signal });
}

function run(argv: readonly string[], o: { env: NodeJS.ProcessEnv; cwd: string; gid: number | undefined; timeoutMs: number; signal: AbortSignal }): Promise<HookOutcome> {
  return new Promise((resolve) => {
    let child: ChildProcessByStdio<null, Readable, Readable>;
    try {
      child = spawn('/bin/sh', argv, { env: o.env, cwd: o.cwd, detached: true, stdio: ['ignore', 'pipe', 'pipe'], ...(o.gid !== undefined ? { gid: o.gid } : {}) });
    } catch (err) {
      resolve({ ok: false, output: `cannot start: ${errorMessage(err)}` });
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    const collect = (b: Buffer): void => {
      chunks.push(b);
      size += b.length;
      // Keep the end: that is where commands say what went wrong.
      while (chunks.length > 1 && size - (chunks[0]?.length ?? 0) >= OUTPUT_BYTES) size -= chunks.shift()?.length ?? 0;
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    child.stdout.on('error', () => undefined);
    child.stderr.on('error', () => undefined);
    const pgid = child.pid;
    let ending: 'timeout' | 'aborted' | undefined;
    let killTimer: NodeJS.Timeout | undefined;
    let killed = false;
    const killNow = (): void => {
      killed = true;
      if (pgid !== undefined) signalGroup(pgid, 'SIGKILL');
    };
    const timer = setTimeout(() => {
      ending ??= 'timeout';
      if (pgid !== undefined) signalGroup(pgid, 'SIGTERM');
      killTimer = setTimeout(killNow, KILL_GRACE_MS);
    }, o.timeoutMs);
    const onAbort = (): void => {
      ending ??= 'aborted';
      killNow();
    };
    o.signal.addEventListener('abort', onAbort, { once: true });
    let done = false;
    const finish = (r: HookOutcome): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      clearTimeout(killTimer);
      o.signal.removeEventListener('abort', onAbort);
      child.stdout.destroy();
      child.stderr.destroy();
      resolve(r);
    };
    child.on('error', (err) => finish({ ok: false, output: `cannot start: ${err.message}` }));
    // 'exit', not 'close': something the hook left behind may hold the pipes open.
    child.on('exit', (code, sig) => {
      // Ended in time: the timeout no longer applies (a grace already running does).
      clearTimeout(timer);
      void (async () => {
        if (pgid !== undefined) await reap(pgid, ending === 'timeout' ? () => killed : () => true);
        // Give the pipes a moment to deliver the last words.
        await sleep(20);
        if (ending === 'aborted') {
          finish({ ok: false, output: 'aborted', aborted: true });
          return;
        }
        const how = ending === 'timeout' ? `timed out after ${seconds(o.timeoutMs)}` : code !== null ? `exit ${code}` : `killed by ${sig ?? 'a signal'}`;
        const text = Buffer.concat(chunks).subarray(-OUTPUT_BYTES).toString('utf8');
        finish({ ok: ending === undefined && code === 0, output: `${text}${text === '' || text.endsWith('\n') ? '' : '\n'}${how}` });
      })();
    });
  });
}

/**
 * Once the hook's main process is gone: whatever is left in its group goes too (at once; after a timeout, once the
 * grace is over), and this waits until the group is empty.
 */
async function reap(pgid: number, mayKill: () => boolean): Promise<void> {
  const deadline = Date.now() + KILL_GRACE_MS + KILL_WAIT_MS;
  while ((await groupMembers(pgid)).length > 0 && Date.now() < deadline) {
    if (mayKill()) signalGroup(pgid, 'SIGKILL');
    await sleep(POLL_MS);
  }
}

function seconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : formatDuration(ms);
}
