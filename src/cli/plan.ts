import type { Command } from 'commander';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { keys, parseHistoryKey } from '../cluster/keys.js';
import type { Store, WatchBatch } from '../cluster/store.js';
import type { TrustView } from '../cluster/trust.js';
import { BackplaneError } from '../errors.js';
import { checkCommand } from '../scheduler/commands.js';
import type { CommandResult, PlanCommand, PlanCommandAction, ServicePlan } from '../scheduler/plan-types.js';
import { isFinished, renderHistory, renderPlan } from '../scheduler/plan-view.js';
import { openPlanRecord } from '../scheduler/records.js';
import { parseDuration } from '../util/duration.js';
import { terminalSafe } from '../util/terminal.js';
import { storeFlags, withStore, type StoreFlags } from './cluster.js';
import { EXIT, print } from './common.js';
import { operatorContext, operatorSigner } from './operator.js';

/**
 * The operator's view and levers of plans (plan-types.ts, docs/plans.md):
 *
 *   backplane plan NAME [--watch] [--history]          the current (or last) plan of a service, as a tree
 *   backplane plan restart-step NAME STEP              run a failed step again
 *   backplane plan force-complete NAME STEP            count a step as done
 *   backplane rollout pause|resume|promote|abort NAME  steer the current rollout
 *   backplane rollout restart-step|force-complete NAME STEP   the same as under plan
 *
 * `plan` has both a NAME argument and subcommands: a first word that is a subcommand (restart-step, force-complete)
 * is always the subcommand, never a service; a service with such a name is shown with `backplane plan --service
 * NAME`. (`plan help` is no subcommand either: commander adds none to a command with an action.)
 *
 * A command is checked against the plan the operator sees (commands.ts checkCommand) before anything is written: a
 * command that makes no sense prints why and exits 1 with the store unchanged. One that does is written as an
 * operator-signed `sched/cmd/<service>/<id>` record, and the CLI waits (10s, --wait; --no-wait skips it) for the
 * controller to apply it: it deletes the record and notes the outcome in the plan's `commands`. Exit codes:
 *   0  applied (or queued, with --no-wait)
 *   1  refused (by the check here or by the controller), no plan, or an unverifiable plan record
 *   2  bad usage (a missing argument, a bad --wait, this host not an operator), or the store could not be reached
 *   3  queued, but no controller applied it in time (is an agent running?): it stays queued, and a controller
 *      applies it when it gets to it — unless the plan has moved on by then, which refuses it
 */

/** Exit code of a command queued but not applied within --wait. */
export const EXIT_QUEUED = 3;

const DEFAULT_WAIT = '10s';

interface PlanFlags extends StoreFlags {
  watch?: boolean;
  history?: boolean;
  service?: string;
  logLines: string;
}

interface CommandFlags extends StoreFlags {
  wait: string | false;
}

type Found = { readonly plan: ServicePlan; readonly revision: number; readonly value: string };

export function registerPlans(program: Command): void {
  const plan = storeFlags(
    program
      .command('plan')
      .description('the current (or last) plan of a service: its phases and steps, each with its state and why; or steer one step')
      .argument('[name]', 'the service')
      .option('--service <name>', 'the service, for one named like a subcommand (restart-step, force-complete)')
      .option('--watch', 'print the plan again whenever it changes, until it is finished (Ctrl-C stops)')
      .option('--history', 'also list the finished plans of the service, oldest first')
      .option('--log-lines <n>', 'how many of its latest log entries to show', '10'),
  );
  // Options after a subcommand are the subcommand's (`plan restart-step web web.0 --state-dir D`). (Commander adds
  // no `help` subcommand to a command with an action: `plan help` shows the plan of a service named help.)
  plan.enablePositionalOptions();
  plan.action(async (name: string | undefined, flags: PlanFlags) => {
    // Ctrl-C ends --watch quietly (exit 0), whenever it comes: the handler is in place before anything is printed.
    const ac = new AbortController();
    const stop = (): void => ac.abort();
    if (flags.watch === true) {
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    }
    try {
      process.exitCode = await withStore(flags, async (store) => showPlan(store, name, flags, ac.signal));
    } finally {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
    }
  });

  stepCommand(plan, 'restart-step', 'run a step of the current plan again: its failed new instance is replaced, its hook runs again');
  stepCommand(plan, 'force-complete', 'count a step of the current plan as done (a new instance that runs is accepted as it is; a step not started leaves its instance as it is)');

  const rollout = program.command('rollout').description("steer a service's current plan: pause, resume, promote its canaries, or abort it");
  rollout.enablePositionalOptions();
  const actions: [PlanCommandAction, string][] = [
    ['pause', 'no new step starts (steps in flight finish; failed instances are still replaced)'],
    ['resume', 'undo pause'],
    ['promote', 'the canaries are healthy: run their before-promote hooks, then roll the rest'],
    ['abort', 'stop the rollout; it rolls back to the last version that completed healthy, if there is one'],
  ];
  for (const [action, description] of actions) {
    commandFlags(storeFlags(rollout.command(action).argument('<name>', 'the service').description(description))).action(async (name: string, flags: CommandFlags) => {
      await runCommand(name, action, undefined, flags);
    });
  }
  // The step commands under rollout too: `backplane rollout restart-step web web.2` is what one reaches for next to
  // `rollout promote`.
  stepCommand(rollout, 'restart-step', 'the same as `backplane plan restart-step NAME STEP`');
  stepCommand(rollout, 'force-complete', 'the same as `backplane plan force-complete NAME STEP`');
}

function stepCommand(parent: Command, action: 'restart-step' | 'force-complete', description: string): void {
  commandFlags(storeFlags(parent.command(action).argument('<name>', 'the service').argument('<step>', 'the step, as `backplane plan NAME` names it (web.2)').description(description))).action(
    async (name: string, step: string, flags: CommandFlags) => {
      await runCommand(name, action, step, flags);
    },
  );
}

function commandFlags(c: Command): Command {
  return c
    .option('--wait <duration>', 'how long to wait for the controller to apply it', DEFAULT_WAIT)
    .option('--no-wait', 'write the command and return without waiting for the controller');
}

// ------------------------------------------------------------------------------------------------------------------
// Reading

/** The verified plan of `name`, or undefined when there is none; an unverifiable record is an error, never shown. */
async function readPlan(store: Store, view: TrustView, name: string): Promise<Found | undefined> {
  const key = keys.plan(name);
  // A list (not a get): it says the store's revision, which a watch then starts after.
  const { kvs, revision } = await store.list(key);
  const kv = kvs.find((k) => k.key === key);
  if (kv === undefined) return undefined;
  const r = openPlanRecord(view, key, name, kv.value);
  if (!r.ok) {
    throw new BackplaneError('E_APPLY', `the plan record of ${name} (${key}) failed verification: ${terminalSafe(r.why)}`, {
      hint: 'it is ignored: only a plan signed by an approved host (the controller), whose specs an operator signed, is believed',
    });
  }
  return { plan: r.value, revision, value: kv.value };
}

async function noPlan(store: Store, name: string): Promise<BackplaneError> {
  const svc = await store.get(keys.service(name));
  return new BackplaneError('E_APPLY', `service ${name} has no plan yet`, {
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

function serviceName(name: string | undefined, flags: PlanFlags): string {
  if (name !== undefined && flags.service !== undefined && name !== flags.service) {
    throw new BackplaneError('E_USAGE', `two services given: ${name} and --service ${flags.service}`, { hint: 'give one' });
  }
  const n = name ?? flags.service;
  if (n === undefined || n === '') throw new BackplaneError('E_USAGE', 'which service? backplane plan NAME', { hint: 'see `backplane services`' });
  return n;
}

// ------------------------------------------------------------------------------------------------------------------
// backplane plan NAME

async function showPlan(store: Store, nameArg: string | undefined, flags: PlanFlags, signal: AbortSignal): Promise<void> {
  const name = serviceName(nameArg, flags);
  const logLines = Number(flags.logLines);
  if (!Number.isInteger(logLines) || logLines < 0) throw new BackplaneError('E_USAGE', `--log-lines must be a whole number >= 0, got "${flags.logLines}"`);
  const ctx = await operatorContext(store, flags);
  const found = await readPlan(store, ctx.view, name);
  if (found === undefined) throw await noPlan(store, name);
  const history = flags.history === true ? await readHistory(store, ctx.view, name) : undefined;
  const opts = { logLines };

  if (flags.json === true) {
    // With --watch: one JSON document per line, one line per change.
    const doc = (plan: ServicePlan): object => (history === undefined ? { plan } : { plan, history: history.plans.filter((h) => h.id !== plan.id) });
    const write = (plan: ServicePlan): boolean => process.stdout.write(`${flags.watch === true ? JSON.stringify(doc(plan)) : JSON.stringify(doc(plan), null, 2)}\n`);
    write(found.plan);
    if (flags.watch === true && !isFinished(found.plan)) await watchPlan(store, ctx.view, name, found, signal, write);
    return;
  }

  const block = (plan: ServicePlan, now: number): string => {
    const lines: string[] = [];
    if (history !== undefined) {
      const past = history.plans.filter((h) => h.id !== plan.id);
      lines.push(...(past.length === 0 ? ['(no finished plans before this one)'] : renderHistory(past, now)), '');
    }
    lines.push(...renderPlan(plan, now, opts));
    if (history !== undefined && history.problems.length > 0) {
      lines.push('', `${history.problems.length} history record${history.problems.length === 1 ? '' : 's'} failed verification and were left out:`);
      lines.push(...history.problems.slice(0, 10).map((p) => `  ${p}`));
    }
    return `${lines.join('\n')}\n`;
  };
  const watching = flags.watch === true && !isFinished(found.plan);
  const tty = watching && process.stdout.isTTY;
  if (!tty) print(block(found.plan, Date.now()));
  if (!watching) return;

  // On a terminal: the screen is cleared and the plan redrawn, on every change and every second (so "started 12s
  // ago" keeps counting). Otherwise: a new block per change, after a blank line.
  let last = found.plan;
  let banner = '';
  const draw = (plan: ServicePlan, changed: boolean): void => {
    const note = plan.id !== last.id ? `plan ${last.id} is over; the service's plan is now ${plan.id}\n` : '';
    if (note !== '') banner = note;
    if (tty) process.stdout.write(`\x1b[H\x1b[2J${terminalSafe(`${banner}${block(plan, Date.now())}\n(watching ${keys.plan(name)}; Ctrl-C stops)\n`)}`);
    else if (changed) print(`\n${note}${block(plan, Date.now())}`);
    last = plan;
  };
  if (tty) draw(found.plan, false);
  await watchPlan(store, ctx.view, name, found, signal, (p) => draw(p, true), tty ? () => draw(last, false) : undefined);
}

/**
 * Calls `onChange` with each new verified plan of `name` until one is finished, Ctrl-C, or the record goes. Follows
 * the key, not one plan id: when the plan is replaced (superseded by a newer spec, rolled back), the new plan is
 * what the service does now, and the watch goes on until that one is finished.
 */
async function watchPlan(store: Store, view: TrustView, name: string, first: Found, stopped: AbortSignal, onChange: (plan: ServicePlan) => void, tick?: () => void): Promise<void> {
  const key = keys.plan(name);
  if (stopped.aborted) return;
  const ac = new AbortController();
  const stop = (): void => ac.abort();
  stopped.addEventListener('abort', stop, { once: true });
  let dirty = false;
  let wake: (() => void) | undefined;
  const poke = (): void => {
    dirty = true;
    wake?.();
  };
  ac.signal.addEventListener('abort', () => wake?.(), { once: true });
  try {
    const onBatch = (b: WatchBatch): void => {
      if (b.type === 'resync' || b.events.some((e) => (e.type === 'put' ? e.kv.key : e.key) === key)) poke();
    };
    try {
      await store.watch(key, first.revision + 1, onBatch, ac.signal);
    } catch (err) {
      // Ctrl-C while the watch was being set up.
      if (ac.signal.aborted) return;
      throw err;
    }
    let lastValue = first.value;
    while (!ac.signal.aborted) {
      if (!dirty) {
        let timer: NodeJS.Timeout | undefined;
        await new Promise<void>((resolve) => {
          wake = resolve;
          if (tick !== undefined) timer = setTimeout(resolve, 1000);
        });
        clearTimeout(timer);
        wake = undefined;
      }
      if (ac.signal.aborted) break;
      if (!dirty) {
        tick?.();
        continue;
      }
      dirty = false;
      const kv = await store.get(key);
      if (kv === undefined) throw new BackplaneError('E_APPLY', `the plan of ${name} was removed from the store`);
      if (kv.value === lastValue) continue;
      lastValue = kv.value;
      const r = openPlanRecord(view, key, name, kv.value);
      if (!r.ok) {
        process.stderr.write(`the new plan record of ${name} failed verification and is ignored: ${terminalSafe(r.why)}\n`);
        continue;
      }
      onChange(r.value);
      if (isFinished(r.value)) break;
    }
  } finally {
    ac.abort();
    stopped.removeEventListener('abort', stop);
  }
}

// ------------------------------------------------------------------------------------------------------------------
// backplane rollout ACTION NAME, backplane plan restart-step|force-complete NAME STEP

async function runCommand(name: string, action: PlanCommandAction, step: string | undefined, flags: CommandFlags): Promise<void> {
  let code: number = EXIT.ok;
  const status = await withStore(flags, async (store) => {
    const waitMs = flags.wait === false ? 0 : parseDuration(flags.wait);
    if (waitMs === undefined) throw new BackplaneError('E_USAGE', `--wait "${String(flags.wait)}" is not a duration`, { hint: 'e.g. --wait 30s, or --no-wait' });
    const ctx = await operatorContext(store, flags);
    const found = await readPlan(store, ctx.view, name);
    const planId = found?.plan.id ?? '';
    const check = checkCommand(found?.plan, { action, service: name, planId, ...(step === undefined ? {} : { step }) });
    if (!check.ok) throw new BackplaneError('E_APPLY', terminalSafe(check.message));
    if (found === undefined) throw await noPlan(store, name);
    const signer = await operatorSigner(ctx);

    const id = randomBytes(8).toString('hex');
    const key = keys.cmd(name, id);
    const cmd: Omit<PlanCommand, 'by'> = { id, service: name, action, planId, ...(step === undefined ? {} : { step }), at: new Date().toISOString() };
    const put = await store.cas(key, 0, signer.sign(key, JSON.stringify(cmd)));
    if (!put.ok) throw new BackplaneError('E_IO', `command key ${key} already exists`, { retryable: true, hint: 'run the command again' });
    const what = `${action}${step === undefined ? '' : ` ${step}`}`;

    const report = (outcome: 'applied' | 'refused' | 'queued' | 'dropped', message: string): void => {
      if (flags.json === true) process.stdout.write(`${JSON.stringify({ id, service: name, action, ...(step === undefined ? {} : { step }), planId, outcome, message }, null, 2)}\n`);
    };
    if (flags.wait === false) {
      report('queued', 'queued');
      if (flags.json !== true) print(`${name}: ${what} queued for plan ${planId} (command ${id}); follow with \`backplane plan ${name} --watch\`\n`);
      return;
    }

    const outcome = await waitForResult(store, ctx.view, name, id, key, found.plan.seq, waitMs);
    if (outcome.kind === 'result') {
      if (outcome.result.ok) {
        report('applied', outcome.result.message);
        if (flags.json !== true) print(`${name}: ${outcome.result.message} (plan ${planId})\n`);
        return;
      }
      report('refused', outcome.result.message);
      throw new BackplaneError('E_APPLY', `the controller refused ${what}: ${terminalSafe(outcome.result.message)}`);
    }
    if (outcome.kind === 'gone') {
      report('dropped', 'removed from the store without a recorded result');
      throw new BackplaneError('E_APPLY', `${what} was removed from the store (${key}) without a result in the plan: it may not have been applied`, {
        hint: `look at the plan and its log: backplane plan ${name}`,
      });
    }
    report('queued', 'not applied yet');
    process.stderr.write(
      `${name}: ${what} queued (command ${id}); the controller has not applied it yet — is an agent running?\n` +
        `  it stays queued in ${key}: a controller applies it when it gets to it, if plan ${planId} is still current then\n`,
    );
    code = EXIT_QUEUED;
  });
  process.exitCode = status === EXIT.ok ? code : status;
}

type Outcome = { readonly kind: 'result'; readonly result: CommandResult } | { readonly kind: 'gone' } | { readonly kind: 'timeout' };

/**
 * Waits for the controller to consume command `id`: its result shows up in the service's plan — the current one,
 * or one archived meanwhile (an abort finishes the plan, which may then move to the history as a rollback starts).
 * The controller deletes the command and records the result in one transaction, so a command gone with no result
 * anywhere was taken by someone else; that is reported after a short grace (a history write can trail).
 */
async function waitForResult(store: Store, view: TrustView, name: string, id: string, key: string, sinceSeq: number, waitMs: number): Promise<Outcome> {
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
    if (Date.now() >= deadline) return present ? { kind: 'timeout' } : { kind: 'gone' };
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
