import { dirname } from 'node:path';
import { BackplaneError } from '../errors.js';
import { formatDuration } from '../util/duration.js';
import { quickSvcParams, svcSchema, type SvcParams } from './svc-schema.js';
import { Supervisor } from './svc/supervisor.js';
import { defineKind, type CheckApplyContext, type CheckResult } from './types.js';

/**
 * A long-running process that the agent itself supervises (there is no systemd to lean on). The per-resource
 * Supervisor owns the process: it restarts it from the exit event — at once, then with exponential backoff, until a
 * crash loop stops it — runs the health check, rotates the logs, and reports what it did through the watch.
 * checkApply is level-based on top of it: start what should run, stop what should not, reload or restart on a
 * notify, and wait until the process is up (healthy, when a health check is configured) so that dependents only run
 * once it is.
 *
 * The process outlives the agent: it runs in its own session with its output going straight to files, and its pid,
 * start time and definition hash are kept in the resource's state directory, so the next agent adopts it instead of
 * starting a second one — or replaces it when the definition changed meanwhile.
 */
export const svcKind = defineKind({
  kind: 'svc',
  description: 'a supervised long-running process: restart with backoff, crash-loop detection, health checks, logs, cgroup limits; survives agent restarts',
  // Its logger starts while the dependencies are applied (prepare, below).
  startEarly: true,
  get schema() {
    return svcSchema();
  },
  refreshable: true,
  quickParams: quickSvcParams,
  // What another host's export may choose here only when the collect rule takes it (see CollectPolicy).
  collect: {
    power: {
      cmd: 'the program root starts',
      user: 'which user the process runs as',
      group: 'which group the process runs as',
      env: "the process's environment (PATH, LD_PRELOAD)",
      cwd: 'the directory the process runs in',
      health: { why: 'a health-check command root runs', when: (h) => typeof h === 'object' && h !== null && 'exec' in h },
      reload: { why: 'a reload command root runs', when: (r) => typeof r === 'object' && r !== null && 'cmd' in r },
      log: {
        why: 'which files root writes the output to',
        when: (l) => typeof l === 'object' && l !== null && ('stdout' in l || 'stderr' in l),
      },
    },
  },
  autoEdges: (params) => {
    const wants: string[] = [];
    const program = params.cmd?.[0];
    if (program?.startsWith('/') === true) wants.push(`path:${program}`);
    if (params.cwd !== undefined) wants.push(`path:${params.cwd}`);
    for (const log of [params.log.stdout, params.log.stderr]) if (log !== undefined) wants.push(`path:${dirname(log)}`);
    if (typeof params.user === 'string') wants.push(`user:${params.user}`);
    if (typeof params.group === 'string') wants.push(`group:${params.group}`);
    return { wants: [...new Set(wants)] };
  },
  create: (id, params, world) => {
    const sup = new Supervisor(id, params, world);
    return {
      watch: async ({ signal, ready, changed, log }) => {
        sup.setLog(log);
        sup.setReporter(changed);
        try {
          await sup.attach();
        } catch (err) {
          // checkApply attaches again and reports this properly; the graph must not wait on it.
          log.warn(`cannot look for a process left by an earlier agent: ${(err as Error).message}`);
        }
        ready();
        await new Promise<void>((resolve) => {
          if (signal.aborted) resolve();
          else signal.addEventListener('abort', () => resolve(), { once: true });
        });
        // Aborting the watch leaves the process running: what happens to it is close()'s decision.
        sup.setReporter(undefined);
      },
      // The logger of a start that is about to come starts while the dependencies are applied (see prepareStart).
      prepare: (log) => {
        sup.setLog(log);
        sup.prepareStart();
      },
      checkApply: async (ctx) => {
        sup.setLog(ctx.log);
        await sup.attach();
        return params.state === 'running' ? ensureRunning(sup, params, ctx) : ensureStopped(sup, ctx);
      },
      // removed: stop the process; replaced: leave it to the new definition; shutdown: keep it for the next agent.
      close: (reason) => sup.close(reason),
    };
  },
});

const CONVERGED: CheckResult = { converged: true, changes: [] };

function result(changes: readonly string[]): CheckResult {
  return changes.length === 0 ? CONVERGED : { converged: false, changes };
}

async function ensureRunning(sup: Supervisor, params: SvcParams, ctx: CheckApplyContext): Promise<CheckResult> {
  const { apply, refresh, signal, log } = ctx;
  if (!apply) return wouldRun(sup, params, refresh);
  sup.supervise();
  await sup.applyLimitsToAdopted();
  const changes: string[] = [];
  const stale = await sup.replaceStale(signal);
  if (stale !== undefined) changes.push(`stopped pid ${stale}: it ran an older definition`);
  if (refresh) {
    sup.freshStart();
    const a = sup.current;
    if (a !== undefined && sup.phase === 'running') {
      if (params.reload !== undefined) {
        changes.push(await sup.reload(signal));
      } else {
        const r = await sup.restart(signal);
        changes.push(`restarted (pid ${r.old ?? '?'} -> ${r.next.proc.pid})`);
      }
    }
  }
  for (;;) {
    if (signal.aborted) throw new BackplaneError('E_ABORTED', 'aborted', { resource: sup.id });
    let a;
    switch (sup.phase) {
      case 'crash-loop':
        throw await sup.crashLoopError();
      case 'failed':
        throw await sup.exitError();
      case 'fenced': {
        // Stale: fail with why (the supervisor calls changed() once it is fresh). Fresh: it is idle now, start it.
        const fenced = sup.fenceError();
        if (fenced !== undefined) throw fenced;
        continue;
      }
      case 'done':
        log.debug('the process completed (exit 0) and the restart policy does not restart it');
        return result([...sup.takeEvents(), ...changes]);
      case 'backoff':
      case 'stopping':
        // The supervisor is already on it; starting here would defeat the backoff.
        await sup.waitChange(signal);
        continue;
      case 'idle':
        a = await sup.start(signal);
        changes.push(`started (pid ${a.proc.pid})`);
        break;
      case 'running':
        a = sup.current;
        break;
    }
    if (a === undefined) continue;
    // One attempt only: when it fails, the error says so and the supervisor's next restart calls changed() again.
    if ((await sup.waitUp(a, signal)) === 'ended') throw await sup.attemptError(a);
    if (params.health !== undefined && a.upAt !== undefined && changes.length > 0) log.debug(`healthy ${formatDuration(a.upAt - a.proc.startedAt)} after start`);
    return result([...sup.takeEvents(), ...changes]);
  }
}

function wouldRun(sup: Supervisor, params: SvcParams, refresh: boolean): CheckResult {
  const changes: string[] = [];
  if (sup.stalePid !== undefined) changes.push(`would stop pid ${sup.stalePid}: it runs an older definition`);
  const a = sup.current;
  if (a === undefined) changes.push('would start');
  else if (refresh) changes.push(params.reload !== undefined ? `would reload pid ${a.proc.pid}` : `would restart pid ${a.proc.pid}`);
  return result(changes);
}

async function ensureStopped(sup: Supervisor, ctx: CheckApplyContext): Promise<CheckResult> {
  const { apply, signal } = ctx;
  const pid = sup.current?.proc.pid;
  if (!apply) {
    const changes: string[] = [];
    if (sup.stalePid !== undefined) changes.push(`would stop pid ${sup.stalePid}`);
    if (pid !== undefined) changes.push(`would stop pid ${pid}`);
    return result(changes);
  }
  sup.unsupervise();
  const changes: string[] = [];
  const stale = await sup.replaceStale(signal);
  if (stale !== undefined) changes.push(`stopped pid ${stale}`);
  const r = await sup.stop(signal);
  if (r !== undefined) changes.push(`stopped (pid ${r.pid}${r.killed ? ', with SIGKILL' : ''})`);
  return result(changes);
}
