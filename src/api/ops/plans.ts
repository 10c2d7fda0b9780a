import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { keys, parseHistoryKey } from '../../cluster/keys.js';
import type { Store } from '../../cluster/store.js';
import type { TrustView } from '../../cluster/trust.js';
import { checkCommand } from '../../scheduler/commands.js';
import type { CommandResult, PlanCommand, ServicePlan } from '../../scheduler/plan-types.js';
import { openPlanRecord } from '../../scheduler/records.js';
import { terminalSafe } from '../../util/terminal.js';
import { ApiError, defineOp, q } from '../ops.js';
import { nameParam, serviceScope, serviceVisible } from './shared.js';

/**
 * Plans (plan-types.ts, docs/plans.md): the current (or last) plan of a service with its history, and the operator's
 * commands on it. A command is checked against the plan first (commands.ts checkCommand): one that makes no sense
 * is refused with the store unchanged. One that does is written as an operator-signed `sched/cmd/<service>/<id>`
 * record, and the op waits (up to `wait` ms) for the controller to apply it: it deletes the record and notes the
 * outcome in the plan's `commands`. The outcome says which: applied, refused (by the controller), queued (not applied
 * in time; it stays queued), dropped (gone without a result).
 */

// The plan as the controller wrote it (plan-types.ts ServicePlan); checked for its frame here, verified when read.
const planSchema = z.looseObject({ id: z.string(), seq: z.number(), service: z.string(), kind: z.string(), status: z.string(), phases: z.array(z.unknown()) });

export const planDocSchema = z.object({
  plan: planSchema,
  history: z.array(planSchema).optional(),
  /** History records that failed verification and were left out. */
  historyProblems: z.array(z.string()).optional(),
});
export type PlanDoc = { readonly plan: ServicePlan; readonly history?: ServicePlan[]; readonly historyProblems?: string[] };

type Found = { readonly plan: ServicePlan; readonly revision: number; readonly value: string };

/** The verified plan of `name`, or undefined when there is none; an unverifiable record is an error, never shown. */
export async function readPlan(store: Store, view: TrustView, name: string): Promise<Found | undefined> {
  const key = keys.plan(name);
  const { kvs, revision } = await store.list(key);
  const kv = kvs.find((k) => k.key === key);
  if (kv === undefined) return undefined;
  const r = openPlanRecord(view, key, name, kv.value);
  if (!r.ok) {
    throw new ApiError(409, `the plan record of ${name} (${key}) failed verification: ${terminalSafe(r.why)}`, {
      code: 'E_APPLY',
      hint: 'it is ignored: only a plan signed by an approved host (the controller), whose specs an operator signed, is believed',
    });
  }
  return { plan: r.value, revision, value: kv.value };
}

async function noPlan(store: Store, name: string): Promise<ApiError> {
  const svc = await store.get(keys.service(name));
  return new ApiError(404, `service ${name} has no plan yet`, {
    code: 'E_APPLY',
    hint: svc === undefined ? `no service "${name}" was deployed (see \`backplane services\`)` : 'the controller makes one once it sees the spec: is an agent running?',
  });
}

/** Finished plans of `name`, oldest first (unverifiable entries are left out and reported in `problems`). */
async function readHistory(store: Store, view: TrustView, name: string): Promise<{ plans: ServicePlan[]; problems: string[] }> {
  const { kvs } = await store.list(keys.historyOf(name));
  const plans: ServicePlan[] = [];
  const problems: string[] = [];
  for (const kv of kvs) {
    const where = parseHistoryKey(kv.key);
    if (where?.service !== name) continue;
    const r = openPlanRecord(view, kv.key, name, kv.value);
    if (r.ok) plans.push(r.value);
    else problems.push(`${kv.key}: ${r.why}`);
  }
  plans.sort((a, b) => a.seq - b.seq);
  return { plans, problems };
}

export const plansGet = defineOp({
  name: 'plans.get',
  method: 'GET',
  path: '/v1/services/{name}/plan',
  role: 'viewer',
  summary: 'Show the current (or last) plan of a service: its phases and steps, each with its state and why; with history, the finished ones',
  input: z.object({ name: nameParam(), history: q.bool().optional() }),
  output: planDocSchema as unknown as z.ZodType<PlanDoc>,
  mutates: false,
  scope: serviceScope,
  run: async (ctx, { name, history }) => {
    const cluster = await ctx.cluster();
    if (!serviceVisible(ctx, await cluster.readState(), name)) throw await noPlan(cluster.store, name);
    const found = await readPlan(cluster.store, cluster.view, name);
    if (found === undefined) throw await noPlan(cluster.store, name);
    if (history !== true) return { plan: found.plan };
    const h = await readHistory(cluster.store, cluster.view, name);
    return { plan: found.plan, history: h.plans.filter((p) => p.id !== found.plan.id), ...(h.problems.length === 0 ? {} : { historyProblems: h.problems }) };
  },
});

export const PLAN_ACTIONS = ['pause', 'resume', 'promote', 'abort', 'restart-step', 'force-complete'] as const;

export const commandOutcomeSchema = z.object({
  id: z.string(),
  service: z.string(),
  action: z.enum(PLAN_ACTIONS),
  step: z.string().optional(),
  planId: z.string(),
  outcome: z.enum(['applied', 'refused', 'queued', 'dropped']),
  message: z.string(),
});
export type CommandOutcome = z.infer<typeof commandOutcomeSchema>;

export const plansCommand = defineOp({
  name: 'plans.command',
  method: 'POST',
  path: '/v1/services/{name}/plan/{action}',
  role: 'operator',
  summary: "Steer a service's current plan: pause, resume, promote, abort, restart-step or force-complete a step",
  input: z.object({
    name: nameParam(),
    action: z.enum(PLAN_ACTIONS),
    step: z.string().min(1).optional(),
    /** How long to wait for the controller to apply it (ms); 0 = queue it and answer at once. */
    wait: q.int(0, 600_000).optional(),
  }),
  output: commandOutcomeSchema,
  mutates: true,
  scope: serviceScope,
  run: async (ctx, { name, action, step, wait }) => {
    const cluster = await ctx.cluster();
    const { store, view } = cluster;
    const found = await readPlan(store, view, name);
    const planId = found?.plan.id ?? '';
    const check = checkCommand(found?.plan, { action, service: name, planId, ...(step === undefined ? {} : { step }) });
    if (!check.ok) throw new ApiError(409, terminalSafe(check.message), { code: 'E_APPLY' });
    if (found === undefined) throw await noPlan(store, name);
    const signer = await cluster.signer();

    const id = randomBytes(8).toString('hex');
    const key = keys.cmd(name, id);
    const cmd: Omit<PlanCommand, 'by'> = { id, service: name, action, planId, ...(step === undefined ? {} : { step }), at: new Date().toISOString() };
    const put = await store.cas(key, 0, signer.sign(key, JSON.stringify(cmd)));
    if (!put.ok) throw new ApiError(409, `command key ${key} already exists`, { code: 'E_IO', retryable: true, hint: 'run the command again' });
    const base = { id, service: name, action, ...(step === undefined ? {} : { step }), planId };
    const waitMs = wait ?? 10_000;
    if (waitMs === 0) return { ...base, outcome: 'queued' as const, message: 'queued' };
    const outcome = await waitForResult(store, view, name, id, key, found.plan.seq, waitMs, ctx.signal);
    if (outcome.kind === 'result') return { ...base, outcome: outcome.result.ok ? ('applied' as const) : ('refused' as const), message: outcome.result.message };
    if (outcome.kind === 'gone') return { ...base, outcome: 'dropped' as const, message: 'removed from the store without a recorded result' };
    return { ...base, outcome: 'queued' as const, message: 'not applied yet' };
  },
});

type Outcome = { readonly kind: 'result'; readonly result: CommandResult } | { readonly kind: 'gone' } | { readonly kind: 'timeout' };

/**
 * Waits for the controller to consume command `id`: its result shows up in the service's plan — the current one,
 * or one archived meanwhile (an abort finishes the plan, which may then move to the history as a rollback starts).
 * The controller deletes the command and records the result in one transaction, so a command gone with no result
 * anywhere was taken by someone else; that is reported after a short grace (a history write can trail).
 */
async function waitForResult(store: Store, view: TrustView, name: string, id: string, key: string, sinceSeq: number, waitMs: number, signal: AbortSignal): Promise<Outcome> {
  const deadline = Date.now() + waitMs;
  let goneAt: number | undefined;
  for (;;) {
    const result = await findResult(store, view, name, id, sinceSeq);
    if (result !== undefined) return { kind: 'result', result };
    const present = (await store.get(key)) !== undefined;
    if (!present) {
      goneAt ??= Date.now();
      if (Date.now() - goneAt > 1000) return { kind: 'gone' };
    }
    if (Date.now() >= deadline || signal.aborted) return present ? { kind: 'timeout' } : { kind: 'gone' };
    await sleep(Math.min(200, Math.max(10, deadline - Date.now())));
  }
}

async function findResult(store: Store, view: TrustView, name: string, id: string, sinceSeq: number): Promise<CommandResult | undefined> {
  const key = keys.plan(name);
  const kv = await store.get(key);
  if (kv !== undefined) {
    const r = openPlanRecord(view, key, name, kv.value);
    const hit = r.ok ? r.value.commands.find((c) => c.id === id) : undefined;
    if (hit !== undefined) return hit;
  }
  const { kvs } = await store.list(keys.historyOf(name));
  for (const h of kvs) {
    const where = parseHistoryKey(h.key);
    if (where?.service !== name || where.seq < sinceSeq) continue;
    const r = openPlanRecord(view, h.key, name, h.value);
    const hit = r.ok ? r.value.commands.find((c) => c.id === id) : undefined;
    if (hit !== undefined) return hit;
  }
  return undefined;
}

export const PLAN_OPS = [plansGet, plansCommand] as const;
