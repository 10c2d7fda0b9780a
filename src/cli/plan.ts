import type { Command } from 'commander';
import type { ClientFlags, OpClient } from '../api/client.js';
import { plansCommand, plansGet, type PlanDoc } from '../api/ops/plans.js';
import { keys } from '../cluster/keys.js';
import { BackplaneError } from '../errors.js';
import type { PlanCommandAction } from '../scheduler/plan-types.js';
import { isFinished, renderHistory, renderPlan } from '../scheduler/plan-view.js';
import { parseDuration } from '../util/duration.js';
import { terminalSafe } from '../util/terminal.js';
import { clientFlags, type StoreFlags } from './cluster.js';
import { EXIT, print } from './common.js';
import { printJson, withClient } from './output.js';

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

interface PlanFlags extends StoreFlags, ClientFlags {
  watch?: boolean;
  history?: boolean;
  service?: string;
  logLines: string;
}

interface CommandFlags extends StoreFlags, ClientFlags {
  wait: string | false;
}

export function registerPlans(program: Command): void {
  const plan = clientFlags(
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
      process.exitCode = await withClient(flags, async (client, json) => showPlan(client, json, name, flags, ac.signal));
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
    commandFlags(clientFlags(rollout.command(action).argument('<name>', 'the service').description(description))).action(async (name: string, flags: CommandFlags) => {
      await runCommand(name, action, undefined, flags);
    });
  }
  // The step commands under rollout too: `backplane rollout restart-step web web.2` is what one reaches for next to
  // `rollout promote`.
  stepCommand(rollout, 'restart-step', 'the same as `backplane plan restart-step NAME STEP`');
  stepCommand(rollout, 'force-complete', 'the same as `backplane plan force-complete NAME STEP`');
}

function stepCommand(parent: Command, action: 'restart-step' | 'force-complete', description: string): void {
  commandFlags(clientFlags(parent.command(action).argument('<name>', 'the service').argument('<step>', 'the step, as `backplane plan NAME` names it (web.2)').description(description))).action(
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

async function showPlan(client: OpClient, json: boolean, nameArg: string | undefined, flags: PlanFlags, signal: AbortSignal): Promise<void> {
  const name = serviceName(nameArg, flags);
  const logLines = Number(flags.logLines);
  if (!Number.isInteger(logLines) || logLines < 0) throw new BackplaneError('E_USAGE', `--log-lines must be a whole number >= 0, got "${flags.logLines}"`);
  const history = flags.history === true;
  const first = await client.call(plansGet, { name, ...(history ? { history: true } : {}) });
  const opts = { logLines };

  if (json) {
    // With --watch: one JSON document per line, one line per change.
    const write = (doc: PlanDoc): boolean => process.stdout.write(`${flags.watch === true ? JSON.stringify(doc) : JSON.stringify(doc, null, 2)}\n`);
    write(first);
    if (flags.watch === true && !isFinished(first.plan)) await watchPlan(client, name, history, first, signal, write);
    return;
  }

  const block = (doc: PlanDoc, now: number): string => {
    const lines: string[] = [];
    const plan = doc.plan;
    if (history) {
      const past = (doc.history ?? []).filter((h) => h.id !== plan.id);
      lines.push(...(past.length === 0 ? ['(no finished plans before this one)'] : renderHistory(past, now)), '');
    }
    lines.push(...renderPlan(plan, now, opts));
    const problems = doc.historyProblems ?? [];
    if (problems.length > 0) {
      lines.push('', `${problems.length} history record${problems.length === 1 ? '' : 's'} failed verification and were left out:`);
      lines.push(...problems.slice(0, 10).map((p) => `  ${p}`));
    }
    return `${lines.join('\n')}\n`;
  };
  const watching = flags.watch === true && !isFinished(first.plan);
  const tty = watching && process.stdout.isTTY;
  if (!tty) print(block(first, Date.now()));
  if (!watching) return;

  // On a terminal: the screen is cleared and the plan redrawn, on every change and every second (so "started 12s
  // ago" keeps counting). Otherwise: a new block per change, after a blank line.
  let last = first;
  let banner = '';
  const draw = (doc: PlanDoc, changed: boolean): void => {
    const note = doc.plan.id !== last.plan.id ? `plan ${last.plan.id} is over; the service's plan is now ${doc.plan.id}\n` : '';
    if (note !== '') banner = note;
    if (tty) process.stdout.write(`\x1b[H\x1b[2J${terminalSafe(`${banner}${block(doc, Date.now())}\n(watching the plan of ${name}; Ctrl-C stops)\n`)}`);
    else if (changed) print(`\n${note}${block(doc, Date.now())}`);
    last = doc;
  };
  if (tty) draw(first, false);
  await watchPlan(client, name, history, first, signal, (d) => draw(d, true), tty ? () => draw(last, false) : undefined);
}

/**
 * Calls `onChange` with each new plan of `name` until one is finished, Ctrl-C, or the plan goes. Follows the service,
 * not one plan id: when the plan is replaced (superseded by a newer spec, rolled back), the new plan is what the
 * service does now, and the watch goes on until that one is finished. Through an agent, its live stream says when
 * plans changed; on a store directly (no agent), the plan is read again every 250 ms.
 */
async function watchPlan(client: OpClient, name: string, history: boolean, first: PlanDoc, stopped: AbortSignal, onChange: (doc: PlanDoc) => void, tick?: () => void): Promise<void> {
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
  let poll: NodeJS.Timeout | undefined;
  try {
    if (client.mode === 'direct') {
      poll = setInterval(poke, 250);
    } else {
      void (async () => {
        try {
          for await (const e of client.stream(ac.signal)) {
            if (e.event === 'hello' || (e.event === 'cluster' && (e.data as { what?: string } | null)?.what === 'plans')) poke();
          }
        } catch {
          // The stream is gone (an agent restarting): read every second from now on.
        }
        if (!ac.signal.aborted) poll = setInterval(poke, 1000);
      })();
    }
    let lastText = JSON.stringify(first);
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
      const doc = await client.call(plansGet, { name, ...(history ? { history: true } : {}) }, { signal: ac.signal });
      const text = JSON.stringify(doc);
      if (text === lastText) continue;
      lastText = text;
      onChange(doc);
      if (isFinished(doc.plan)) break;
    }
  } catch (err) {
    // Ctrl-C while a read was in flight.
    if (!ac.signal.aborted) throw err;
  } finally {
    clearInterval(poll);
    ac.abort();
    stopped.removeEventListener('abort', stop);
  }
}

// ------------------------------------------------------------------------------------------------------------------
// backplane rollout ACTION NAME, backplane plan restart-step|force-complete NAME STEP

async function runCommand(name: string, action: PlanCommandAction, step: string | undefined, flags: CommandFlags): Promise<void> {
  let code: number = EXIT.ok;
  const status = await withClient(flags, async (client, json) => {
    const waitMs = flags.wait === false ? 0 : parseDuration(flags.wait);
    if (waitMs === undefined) throw new BackplaneError('E_USAGE', `--wait "${String(flags.wait)}" is not a duration`, { hint: 'e.g. --wait 30s, or --no-wait' });
    const r = await client.call(plansCommand, { name, action, ...(step === undefined ? {} : { step }), wait: waitMs });
    const what = `${action}${step === undefined ? '' : ` ${step}`}`;
    if (json) printJson(r);
    if (flags.wait === false) {
      if (!json) print(`${name}: ${what} queued for plan ${r.planId} (command ${r.id}); follow with \`backplane plan ${name} --watch\`\n`);
      return;
    }
    if (r.outcome === 'applied') {
      if (!json) print(`${name}: ${r.message} (plan ${r.planId})\n`);
      return;
    }
    if (r.outcome === 'refused') throw new BackplaneError('E_APPLY', `the controller refused ${what}: ${terminalSafe(r.message)}`);
    if (r.outcome === 'dropped') {
      throw new BackplaneError('E_APPLY', `${what} was removed from the store (${keys.cmd(name, r.id)}) without a result in the plan: it may not have been applied`, {
        hint: `look at the plan and its log: backplane plan ${name}`,
      });
    }
    process.stderr.write(
      `${name}: ${what} queued (command ${r.id}); the controller has not applied it yet — is an agent running?\n` +
        `  it stays queued in ${keys.cmd(name, r.id)}: a controller applies it when it gets to it, if plan ${r.planId} is still current then\n`,
    );
    code = EXIT_QUEUED;
  });
  process.exitCode = status === EXIT.ok ? code : status;
}
