import { ACTIVE_STATUSES, type CommandResult, type PlanCommand, type PlanStep, type ServicePlan } from './plan-types.js';

/**
 * The operator's commands on a plan, as pure functions: `checkCommand` says whether a command makes sense against
 * a plan (the CLI asks before writing anything, so bad input changes nothing), `applyCommand` is what the
 * controller does with one it read from the store (it checks again: the plan may have moved on in between).
 *
 * What each does:
 * - pause: no new step starts (steps in flight finish; healing of failed instances goes on). Kept in the plan
 *   record, so it survives a controller failover.
 * - resume: undoes pause.
 * - promote: the canaries are healthy and waiting: run their before-promote hooks, then roll the rest.
 * - abort: stop the rollout here. When there is an earlier healthy version it rolls back to it (that is what an
 *   abort is for); otherwise instances stay as they are.
 * - restart-step STEP: run the step again (its failed new instance is replaced; its hook runs again).
 * - force-complete STEP: count the step as done: a new instance that runs is accepted as it is (its old one stops);
 *   a step not started leaves its instance as it is; a failing before-stop hook is skipped.
 */

export type CommandCheck = { readonly ok: true } | { readonly ok: false; readonly message: string };

export function isActive(plan: ServicePlan): boolean {
  return ACTIVE_STATUSES.includes(plan.status);
}

export function allSteps(plan: ServicePlan): PlanStep[] {
  return plan.phases.flatMap((p) => p.steps);
}

export function findStep(plan: ServicePlan, name: string): PlanStep | undefined {
  return allSteps(plan).find((s) => s.name === name);
}

function finishedWhy(plan: ServicePlan): string {
  const what = plan.status === 'rolled-back' ? 'failed and was rolled back' : plan.status === 'superseded' ? 'was superseded by a newer spec' : `is ${plan.status}`;
  return `plan ${plan.id} ${what}`;
}

export function checkCommand(plan: ServicePlan | undefined, cmd: Pick<PlanCommand, 'action' | 'service' | 'planId' | 'step'>): CommandCheck {
  const no = (message: string): CommandCheck => ({ ok: false, message });
  if (plan === undefined) return no(`service ${cmd.service} has no plan yet (deploy it first: backplane deploy -f FILE)`);
  if (cmd.planId !== plan.id) return no(`plan ${cmd.planId} is not the current plan of ${cmd.service} (${plan.id} is); look again with: backplane plan ${cmd.service}`);
  const active = isActive(plan);
  switch (cmd.action) {
    case 'pause':
      if (!active) return no(`${finishedWhy(plan)}: nothing to pause`);
      if (plan.paused) return no(`plan ${plan.id} is already paused (resume it with: backplane rollout resume ${plan.service})`);
      return { ok: true };
    case 'resume':
      if (!active) return no(`${finishedWhy(plan)}: nothing to resume`);
      if (!plan.paused) return no(`plan ${plan.id} is not paused`);
      return { ok: true };
    case 'promote': {
      if (!active) return no(`${finishedWhy(plan)}: nothing to promote`);
      const canary = plan.phases.find((p) => p.name === 'canary');
      if (canary === undefined) return no(`plan ${plan.id} (${plan.kind}) has no canaries to promote`);
      if (plan.promote !== 'no') return no(`the canaries of plan ${plan.id} are already ${plan.promote === 'done' ? 'promoted' : 'being promoted'}`);
      const ready = canary.steps.filter((s) => s.state === 'waiting-operator' || (s.state === 'complete' && s.forced === true)).length;
      if (ready < canary.steps.length)
        return no(`${ready} of ${canary.steps.length} canaries are healthy and waiting; promote once they all are (watch: backplane plan ${plan.service} --watch)`);
      return { ok: true };
    }
    case 'abort':
      if (plan.status === 'aborted') return no(`plan ${plan.id} was already aborted`);
      if (!active) return no(`${finishedWhy(plan)}: nothing to abort`);
      return { ok: true };
    case 'restart-step':
    case 'force-complete': {
      if (cmd.step === undefined || cmd.step === '') return no(`${cmd.action} needs a step name`);
      if (!active) return no(`${finishedWhy(plan)}: its steps can no longer be changed`);
      const step = findStep(plan, cmd.step);
      if (step === undefined) {
        const names = allSteps(plan).map((s) => s.name);
        return no(`plan ${plan.id} has no step "${cmd.step}"${names.length === 0 ? ' (it has no steps)' : `; its steps: ${names.slice(0, 20).join(', ')}${names.length > 20 ? ', ...' : ''}`}`);
      }
      if (cmd.action === 'restart-step' && step.state === 'pending') return no(`step ${step.name} has not started: nothing to restart`);
      if (cmd.action === 'force-complete' && step.state === 'complete') return no(`step ${step.name} is already complete`);
      return { ok: true };
    }
  }
}

/** The operator acted on a failed plan: it runs again (the plan engine fails it again if the step still fails). */
function unfail(plan: ServicePlan): ServicePlan {
  if (plan.failedAt === undefined) return plan;
  const { failedAt: _f, why: _w, ...rest } = plan;
  return { ...rest, status: plan.paused ? 'paused' : 'running' };
}

const MAX_LOG = 50;
const MAX_COMMANDS = 20;

export function withLog(plan: ServicePlan, at: number, message: string): ServicePlan {
  return { ...plan, updatedAt: at, log: [...plan.log, { at, message }].slice(-MAX_LOG) };
}

function withResult(plan: ServicePlan, r: CommandResult): ServicePlan {
  return { ...plan, commands: [...plan.commands, r].slice(-MAX_COMMANDS) };
}

/**
 * Applies one command to the plan it names. Returns the plan to store (with the outcome in its `commands`, and in
 * its log when it changed something) and the outcome. `abort` only marks the plan; the plan engine starts the
 * rollback (it knows whether there is a healthy version to go back to).
 */
export function applyCommand(plan: ServicePlan | undefined, cmd: PlanCommand, now: number): { plan: ServicePlan | undefined; result: CommandResult } {
  const by = cmd.by === undefined ? '' : ` by ${cmd.by}`;
  const check = checkCommand(plan, cmd);
  if (!check.ok || plan === undefined) {
    const result: CommandResult = { id: cmd.id, action: cmd.action, ok: false, message: check.ok ? 'no plan' : check.message, at: now };
    return { plan: plan === undefined ? undefined : withResult(plan, result), result };
  }
  let next: ServicePlan;
  let message: string;
  switch (cmd.action) {
    case 'pause':
      next = { ...plan, paused: true, status: 'paused' };
      message = `paused${by}`;
      break;
    case 'resume':
      // Time paused does not count against the progress deadline.
      next = { ...plan, paused: false, status: plan.failedAt !== undefined ? 'waiting' : 'running', lastProgressAt: now };
      message = `resumed${by}`;
      break;
    case 'promote':
      next = { ...plan, promote: 'requested', status: plan.paused ? 'paused' : 'running', lastProgressAt: now };
      message = `promote requested${by}`;
      break;
    case 'abort':
      next = { ...plan, status: 'aborted', why: `aborted${by}`, finishedAt: now };
      message = `aborted${by}`;
      break;
    case 'restart-step': {
      const step = cmd.step ?? '';
      next = { ...plan, restarted: { ...plan.restarted, [step]: now }, forced: plan.forced.filter((s) => s !== step), lastProgressAt: now };
      next = unfail(next);
      message = `step ${step} restarted${by}`;
      break;
    }
    case 'force-complete': {
      const step = cmd.step ?? '';
      next = unfail({ ...plan, forced: [...new Set([...plan.forced, step])], lastProgressAt: now });
      message = `step ${step} force-completed${by}`;
      break;
    }
  }
  const result: CommandResult = { id: cmd.id, action: cmd.action, ok: true, message, at: now };
  return { plan: withResult(withLog(next, now, message), result), result };
}
