import { ACTIVE_STATUSES, type PlanLogEntry, type PlanPhase, type PlanStep, type PlanStrategy, type ServicePlan, type StepState } from './plan-types.js';
import { formatDuration } from './reconcile.js';

/**
 * How `backplane plan` shows a plan: pure functions from a plan (and the time now) to lines, so the same text is
 * printed by the CLI, checked by tests and quoted in docs/plans.md.
 *
 *   plan web-4  update v1 -> v2 (count 6)  running  started 12s ago
 *     strategy: canary 1 (waits for promote), then 2 at a time, stop first; healthy 10s; deadline 5m; ...
 *     canary  [0 of 1 complete, 1 waiting for operator]  canary: waits for promote
 *       web.0  replace  waiting-operator  12s  canary healthy for 12s; waiting for promote (backplane rollout promote web)
 *                web.0.1a2b3c4d (v1) on h1 -> web.0.5e6f7a8b on h2
 *     ...
 *     log:
 *       12:00:01  started (update v1 -> v2)
 */

export interface RenderOptions {
  /** Log entries shown, newest last (default 10; 0 = none). */
  readonly logLines?: number;
  /** Times in UTC instead of local time (tests, and output that must not depend on where it was printed). */
  readonly utc?: boolean;
}

export function isFinished(plan: ServicePlan): boolean {
  return !ACTIVE_STATUSES.includes(plan.status);
}

/** "4s", "2m", "1.5h"; never negative (clocks of two hosts disagree a little). */
export function human(ms: number): string {
  const whole = Math.max(0, Math.round(ms / 1000) * 1000);
  return whole === 0 ? '0s' : formatDuration(whole);
}

/** HH:MM:SS, with the date in front when it is not the day of `now`. */
export function clock(at: number, now: number, opts: RenderOptions = {}): string {
  const d = new Date(at);
  const n = new Date(now);
  const two = (v: number): string => String(v).padStart(2, '0');
  const utc = opts.utc === true;
  const [y, mo, day, h, mi, s] = utc
    ? [d.getUTCFullYear(), d.getUTCMonth() + 1, d.getUTCDate(), d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds()]
    : [d.getFullYear(), d.getMonth() + 1, d.getDate(), d.getHours(), d.getMinutes(), d.getSeconds()];
  const sameDay = utc
    ? d.getUTCFullYear() === n.getUTCFullYear() && d.getUTCMonth() === n.getUTCMonth() && d.getUTCDate() === n.getUTCDate()
    : d.getFullYear() === n.getFullYear() && d.getMonth() === n.getMonth() && d.getDate() === n.getDate();
  const time = `${two(h)}:${two(mi)}:${two(s)}`;
  return sameDay ? time : `${y}-${two(mo)}-${two(day)} ${time}`;
}

/** "update v1 -> v2 (count 6)", "scale v2 (count 3 -> 6)", "deploy v1 (count 3)". */
export function planSummary(plan: ServicePlan): string {
  const version = plan.fromVersion !== undefined && plan.fromVersion !== plan.toVersion ? `${plan.fromVersion} -> ${plan.toVersion}` : plan.toVersion;
  const count = plan.fromCount !== undefined && plan.fromCount !== plan.toCount ? `${plan.fromCount} -> ${plan.toCount}` : String(plan.toCount);
  return `${plan.kind} ${version} (count ${count})`;
}

/** "canary 1 (waits for promote), then 2 at a time, stop first; healthy 10s; deadline 5m; progress deadline 10m; ..." */
export function strategyText(s: PlanStrategy, count: number): string {
  const pace = s.maxParallel === 1 ? 'one at a time' : count > 1 && s.maxParallel >= count ? 'all at once' : `${s.maxParallel} at a time`;
  const canary = s.canary > 0 ? `canary ${s.canary} (${s.autoPromote ? 'promoted automatically once healthy' : 'waits for promote'}), then ` : '';
  return [
    `${canary}${pace}, ${s.startFirst ? 'start first' : 'stop first'}`,
    `healthy ${human(s.minHealthyMs)}`,
    `deadline ${human(s.healthyDeadlineMs)}`,
    s.progressDeadlineMs > 0 ? `progress deadline ${human(s.progressDeadlineMs)}` : 'no progress deadline',
    `at most ${s.maxUnavailable} down`,
    `auto-revert ${s.autoRevert ? 'on' : 'off'}`,
  ].join('; ');
}

/** What a state means when the controller left no why. */
const DEFAULT_WHY: Readonly<Record<StepState, string>> = {
  pending: 'not started',
  prepared: 'the old instance is being stopped',
  starting: 'the new instance is placed, not up yet',
  'waiting-health': 'up, not healthy for long enough yet',
  complete: 'done',
  'waiting-operator': 'waiting for the operator',
  error: 'failed',
};

/** Why a step is where it is, with what the operator can do about it when the plan waits on them. */
export function stepWhy(plan: ServicePlan, phase: PlanPhase, step: PlanStep): string {
  let why = step.why ?? DEFAULT_WHY[step.state];
  if (step.forced === true || (plan.forced.includes(step.name) && step.state === 'complete')) why += ' (force-completed by the operator)';
  const active = !isFinished(plan);
  if (active && step.state === 'waiting-operator' && phase.name === 'canary' && plan.promote === 'no' && !why.includes('rollout promote')) {
    why += ` (backplane rollout promote ${plan.service})`;
  }
  if (active && step.state === 'error' && !why.includes('restart-step')) {
    why += ` (backplane plan restart-step ${plan.service} ${step.name}, or force-complete)`;
  }
  return why;
}

/** "web.0.1a2b3c4d (v1) on h1 -> web.0.5e6f7a8b on h2", or undefined when neither is known. */
export function stepAllocs(step: PlanStep): string | undefined {
  const from = step.from === undefined ? undefined : `${step.from.allocId} (${step.from.version}) on ${step.from.host}`;
  const to = step.to === undefined ? undefined : `${step.to.allocId} on ${step.to.host}`;
  if (from === undefined && to === undefined) return undefined;
  if (from === undefined) return `-> ${to ?? ''}`;
  if (to === undefined) return step.action === 'stop' ? `${from} stops` : step.state === 'pending' ? from : `${from} -> (not placed yet)`;
  return `${from} -> ${to}`;
}

/** "[2 of 5 complete, 1 starting, 1 error]". */
export function phaseProgress(phase: PlanPhase): string {
  const by = new Map<StepState, number>();
  for (const s of phase.steps) by.set(s.state, (by.get(s.state) ?? 0) + 1);
  const order: StepState[] = ['waiting-operator', 'error', 'prepared', 'starting', 'waiting-health'];
  const rest = order.filter((s) => (by.get(s) ?? 0) > 0).map((s) => `${by.get(s) ?? 0} ${s === 'waiting-operator' ? 'waiting for operator' : s}`);
  return `[${[`${by.get('complete') ?? 0} of ${phase.steps.length} complete`, ...rest].join(', ')}]`;
}

function statusText(plan: ServicePlan): string {
  if (plan.status === 'running' && plan.promote === 'requested') return 'running (promoting: before-promote hooks run on the canaries)';
  if (plan.paused && plan.status !== 'paused') return `${plan.status} (paused)`;
  return plan.status;
}

function timing(plan: ServicePlan, now: number): string {
  if (plan.finishedAt !== undefined) return `started ${human(now - plan.createdAt)} ago, finished ${human(now - plan.finishedAt)} ago after ${human(plan.finishedAt - plan.createdAt)}`;
  return `started ${human(now - plan.createdAt)} ago`;
}

function indentOutput(output: string, pad: string): string[] {
  const lines = output.replace(/\s+$/, '').split('\n');
  const shown = lines.length > 20 ? ['...', ...lines.slice(-20)] : lines;
  return shown.map((l) => `${pad}| ${l}`);
}

export function renderLog(entries: readonly PlanLogEntry[], now: number, opts: RenderOptions = {}): string[] {
  return entries.map((e) => `${clock(e.at, now, opts)}  ${e.message}`);
}

/** The whole plan as lines (no trailing newlines). */
export function renderPlan(plan: ServicePlan, now: number, opts: RenderOptions = {}): string[] {
  const out: string[] = [];
  out.push(`plan ${plan.id}  ${planSummary(plan)}  ${statusText(plan)}  ${timing(plan, now)}`);
  if (plan.why !== undefined) out.push(`  why: ${plan.why}`);
  out.push(`  strategy: ${strategyText(plan.strategy, plan.toCount)}`);
  if (plan.stable !== undefined) out.push(`  rollback target: ${plan.stable.version} (the last version that completed healthy)`);
  if (plan.status === 'waiting' && !plan.phases.some((p) => p.steps.some((s) => s.state === 'waiting-operator' || s.state === 'error'))) {
    out.push('  waiting for the operator');
  }
  const names = plan.phases.flatMap((p) => p.steps.map((s) => s.name.length));
  const nameWidth = Math.max(4, ...names);
  for (const phase of plan.phases) {
    out.push(`  ${phase.name}  ${phaseProgress(phase)}${phase.strategy === '' ? '' : `  ${phase.strategy}`}`);
    if (phase.steps.length === 0) out.push('    (no steps)');
    for (const step of phase.steps) {
      const since = step.state === 'complete' || step.state === 'pending' ? '' : human(now - step.since);
      out.push(`    ${step.name.padEnd(nameWidth)}  ${step.action.padEnd(7)}  ${step.state.padEnd(16)}  ${since.padEnd(5)}  ${stepWhy(plan, phase, step)}`.replace(/\s+$/, ''));
      const pad = ' '.repeat(4 + nameWidth + 2);
      const allocs = stepAllocs(step);
      if (allocs !== undefined) out.push(`${pad}${allocs}`);
      const restarted = plan.restarted[step.name];
      if (restarted !== undefined) out.push(`${pad}restarted by the operator ${human(now - restarted)} ago`);
      if (step.output !== undefined && step.output.trim() !== '') out.push(...indentOutput(step.output, pad));
    }
  }
  const n = opts.logLines ?? 10;
  if (n > 0 && plan.log.length > 0) {
    const shown = plan.log.slice(-n);
    out.push(`  log${plan.log.length > shown.length ? ` (last ${shown.length} of ${plan.log.length})` : ''}:`);
    out.push(...renderLog(shown, now, opts).map((l) => `    ${l}`));
  }
  return out;
}

/**
 * One line per plan, oldest first: id, kind, versions, count, status, when it started and finished, how long it
 * took, and why it ended as it did.
 *
 *   web-3  update    v1 -> v2  count 6  complete     started 11:58:01, finished 12:00:01, took 2m
 *   web-4  update    v2 -> v3  count 6  rolled-back  started 12:01:00, finished 12:06:00, took 5m  web.2 not healthy within 5m
 */
export function renderHistory(plans: readonly ServicePlan[], now: number, opts: RenderOptions = {}): string[] {
  const rows = plans.map((p) => {
    const version = p.fromVersion !== undefined && p.fromVersion !== p.toVersion ? `${p.fromVersion} -> ${p.toVersion}` : p.toVersion;
    const count = p.fromCount !== undefined && p.fromCount !== p.toCount ? `count ${p.fromCount} -> ${p.toCount}` : `count ${p.toCount}`;
    const when =
      p.finishedAt !== undefined
        ? `started ${clock(p.createdAt, now, opts)}, finished ${clock(p.finishedAt, now, opts)}, took ${human(p.finishedAt - p.createdAt)}`
        : `started ${clock(p.createdAt, now, opts)}, ${human(now - p.createdAt)} so far`;
    return [p.id, p.kind, version, count, p.status, when, p.why ?? ''];
  });
  const widths = [0, 1, 2, 3, 4].map((i) => Math.max(0, ...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((cell, i) => (i < widths.length ? cell.padEnd(widths[i] ?? 0) : cell)).join('  ').replace(/\s+$/, ''));
}
