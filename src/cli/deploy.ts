import type { Command } from 'commander';
import { setTimeout as sleep } from 'node:timers/promises';
import { keys } from '../cluster/keys.js';
import { BackplaneError } from '../errors.js';
import { reconcile } from '../scheduler/reconcile.js';
import type { ServiceRecord } from '../scheduler/records.js';
import { readServiceFile } from '../scheduler/spec.js';
import { toSnapshot, type SchedState } from '../scheduler/state.js';
import type { Plan, ServiceSpec } from '../scheduler/types.js';
import { parseDuration } from '../util/duration.js';
import { storeFlags, withStore, type StoreFlags } from './cluster.js';
import { print } from './common.js';
import { operatorContext, operatorSigner } from './operator.js';

interface DeployFlags extends StoreFlags {
  file: string;
  dryRun?: boolean;
  wait?: string | boolean;
}

/**
 * `backplane deploy -f web.yaml`: validates the spec (every error with its file:line; nothing is written unless all
 * of it is valid), shows what the controller would do with it, and writes it signed by this (operator) host. The
 * plan shown is computed by the same pure reconciler the controller runs, over the same snapshot it would read.
 */
export function registerDeploy(program: Command): void {
  storeFlags(program.command('deploy').description('declare or change services: the cluster places, runs and heals their instances'))
    .requiredOption('-f, --file <path>', 'service spec (YAML, or a TypeScript module)')
    .option('--dry-run', 'print what would change (instances to start, stop, move or replace, and where) and change nothing')
    .option('--wait [timeout]', 'wait until every instance of the new version is healthy (default timeout 5m)')
    .action(async (flags: DeployFlags) => {
      let infeasible = false;
      const code = await withStore(flags, async (store) => {
        const specs = await readServiceFile(flags.file);
        const ctx = await operatorContext(store, flags);
        const signer = flags.dryRun === true ? undefined : await operatorSigner(ctx);
        const state = await ctx.readState();
        for (const spec of specs) {
          const current = state.services.get(spec.name)?.spec;
          const plan = planFor(state, spec);
          printPlan(spec, current, plan, state);
          if (plan.infeasible.some((i) => i.service === spec.name)) infeasible = true;
          if (signer === undefined) continue;
          if (current !== undefined && current.version === spec.version && current.count === spec.count) {
            print(`${spec.name}: unchanged (version ${spec.version})\n`);
            continue;
          }
          const key = keys.service(spec.name);
          const record: ServiceRecord = { spec, source: flags.file, deployedAt: new Date().toISOString() };
          const value = signer.sign(key, JSON.stringify(record));
          await store.put(key, value);
          print(`${spec.name}: deployed version ${spec.version}, ${spec.count} instance${spec.count === 1 ? '' : 's'}${current === undefined ? '' : ` (was ${current.version}, ${current.count})`}\n`);
        }
        if (flags.dryRun === true) {
          print('dry run: nothing was changed\n');
          return;
        }
        if (flags.wait !== undefined && flags.wait !== false) {
          const timeoutMs = flags.wait === true ? 300_000 : parseDuration(flags.wait);
          if (timeoutMs === undefined) throw new BackplaneError('E_USAGE', `--wait "${String(flags.wait)}" is not a duration`, { hint: 'e.g. --wait 60s' });
          await waitHealthy(() => ctx.readState(), specs, timeoutMs);
        }
      });
      // A dry run that finds instances it cannot place exits 1, so a pipeline can stop before deploying.
      process.exitCode = code === 0 && infeasible && flags.dryRun === true ? 1 : code;
    });
}

/** The plan the controller would make with `spec` in place of the current one. */
export function planFor(state: SchedState, spec: ServiceSpec): Plan {
  const now = Date.now();
  // Hosts not alive now are taken as gone for longer than any fence: the plan shows their instances replaced.
  const lastAlive = new Map(state.members.filter((m) => m.verified).map((m) => [m.host, now]));
  return reconcile(toSnapshot(state, now, { lastAlive, since: 0, fenceGraceMs: 0, override: spec }));
}

function printPlan(spec: ServiceSpec, current: ServiceSpec | undefined, plan: Plan, state: SchedState): void {
  const mine = plan.place.filter((p) => p.alloc.service === spec.name);
  const stops = plan.stop.filter((s) => s.service === spec.name);
  const running = [...state.assigns.values()].filter((a) => a.alloc.service === spec.name).length;
  print(`${spec.name}: ${current === undefined ? 'new service' : current.version === spec.version ? `version ${spec.version}` : `version ${current.version} -> ${spec.version}`}, count ${current?.count ?? 0} -> ${spec.count} (${running} placed now)\n`);
  const replaced = new Set(mine.flatMap((p) => (p.alloc.previous === undefined ? [] : [p.alloc.previous])));
  for (const p of mine) {
    const verb = p.reason === 'new' ? 'start' : p.reason === 'update' ? 'replace' : p.reason === 'drain' ? 'move' : p.reason === 'lost' ? 'replace (host lost)' : 'reschedule';
    const from = p.alloc.previous === undefined ? '' : ` (instead of ${p.alloc.previous}${hostOf(state, p.alloc.previous)})`;
    print(`  ${verb.padEnd(20)} ${spec.name}.${p.alloc.index} on ${p.alloc.host}${from}\n`);
  }
  for (const s of stops) if (!replaced.has(s.allocId)) print(`  ${'stop'.padEnd(20)} ${s.allocId} on ${s.host}: ${s.reason}\n`);
  for (const i of plan.infeasible) if (i.service === spec.name) print(`  CANNOT PLACE: ${i.message}\n`);
  for (const w of plan.warnings) print(`  warning: ${w}\n`);
  const updates = mine.filter((p) => p.reason === 'update').length;
  const outdated = [...state.assigns.values()].filter((a) => a.alloc.service === spec.name && a.alloc.version !== spec.version).length;
  if (outdated > updates) print(`  (${outdated} instances of older versions are replaced ${spec.update.maxParallel} at a time, each new one healthy before its old one stops)\n`);
  if (mine.length === 0 && stops.length === 0 && plan.infeasible.every((i) => i.service !== spec.name)) print('  no change to instances\n');
}

function hostOf(state: SchedState, allocId: string): string {
  const a = state.assigns.get(allocId);
  return a === undefined ? '' : ` on ${a.alloc.host}`;
}

async function waitHealthy(read: () => Promise<SchedState>, specs: readonly ServiceSpec[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const state = await read();
    const missing: string[] = [];
    for (const spec of specs) {
      const ok = [...state.assigns.values()].filter((a) => {
        if (a.alloc.service !== spec.name || a.alloc.version !== spec.version) return false;
        const st = state.statuses.get(a.alloc.id)?.state;
        return st === 'healthy' || (spec.health === undefined && st === 'running');
      });
      const indexes = new Set(ok.map((a) => a.alloc.index));
      if (indexes.size < spec.count) missing.push(`${spec.name}: ${indexes.size} of ${spec.count} healthy`);
    }
    if (missing.length === 0) {
      print(`all healthy\n`);
      return;
    }
    if (Date.now() > deadline) throw new BackplaneError('E_TIMEOUT', `not healthy within ${Math.round(timeoutMs / 1000)}s: ${missing.join('; ')}`, { hint: 'see `backplane service NAME` for each instance and its events' });
    await sleep(200);
  }
}
