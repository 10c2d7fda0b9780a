import type { Command } from 'commander';
import { setTimeout as sleep } from 'node:timers/promises';
import { keys } from '../cluster/keys.js';
import { BackplaneError } from '../errors.js';
import type { ServicePlan } from '../scheduler/plan-types.js';
import { planPass } from '../scheduler/plans.js';
import { specOfRef } from '../scheduler/records.js';
import type { AppRecord, ServiceRecord } from '../scheduler/records.js';
import { readDeployFile } from '../scheduler/spec.js';
import { expandObjects } from '../backplanes/objects.js';
import { canonicalJson } from '../util/canonical.js';
import { serviceInputs, specInForce, toSnapshot, type SchedState } from '../scheduler/state.js';
import type { TrustView } from '../cluster/trust.js';
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
        const file = await readDeployFile(flags.file);
        // Application objects (`kind: redis`): their backplanes validate and expand them into services.
        const objects = await expandObjects(file.objects);
        const specs = [...file.services, ...objects.flatMap((o) => o.services)];
        const ctx = await operatorContext(store, flags);
        const signer = flags.dryRun === true ? undefined : await operatorSigner(ctx);
        const state = await ctx.readState();
        for (const spec of specs) {
          // An object may not take over a service someone else declared (by hand, or another object).
          const owner = state.services.get(spec.name)?.spec?.app?.name;
          const cur = state.services.get(spec.name);
          if (cur?.spec !== undefined && owner !== spec.app?.name)
            throw new BackplaneError('E_DUPLICATE', `service "${spec.name}" already exists${owner === undefined ? ' (deployed on its own)' : ` (part of ${owner})`}`, { hint: 'give the object or service another name, or remove the existing one first; nothing was deployed' });
        }
        const deployedAt = new Map<string, string>();
        for (const o of objects) {
          const prev = state.apps.get(o.object.name)?.record;
          const same = prev !== undefined && !('removed' in prev) && canonicalJson(prev.object) === canonicalJson(o.object) && canonicalJson(prev.services) === canonicalJson(o.services.map((x) => x.name));
          print(`${o.object.name}: ${o.object.kind} object${prev === undefined || 'removed' in prev ? ', new' : same ? ', unchanged' : ', changed'}: ${o.services.map((x) => `${x.name} (${x.count} instance${x.count === 1 ? '' : 's'})`).join(', ')}\n`);
          if (signer === undefined || same) continue;
          const key = keys.app(o.object.name);
          const record: AppRecord = { object: o.object, services: o.services.map((x) => x.name), source: flags.file, deployedAt: new Date().toISOString() };
          await store.put(key, signer.sign(key, JSON.stringify(record)));
        }
        for (const spec of specs) {
          const current = state.services.get(spec.name)?.spec;
          const plan = planFor(state, spec, ctx.view);
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
          deployedAt.set(spec.name, record.deployedAt);
          print(`${spec.name}: deployed version ${spec.version}, ${spec.count} instance${spec.count === 1 ? '' : 's'}${current === undefined ? '' : ` (was ${current.version}, ${current.count})`}\n`);
        }
        if (flags.dryRun === true) {
          print('dry run: nothing was changed\n');
          return;
        }
        if (flags.wait !== undefined && flags.wait !== false) {
          const timeoutMs = flags.wait === true ? 300_000 : parseDuration(flags.wait);
          if (timeoutMs === undefined) throw new BackplaneError('E_USAGE', `--wait "${String(flags.wait)}" is not a duration`, { hint: 'e.g. --wait 60s' });
          await waitHealthy(() => ctx.readState(), specs, deployedAt, timeoutMs);
        }
      });
      // A dry run that finds instances it cannot place exits 1, so a pipeline can stop before deploying.
      process.exitCode = code === 0 && infeasible && flags.dryRun === true ? 1 : code;
    });
}

/**
 * The plan the controller would make with `spec` in place of the current one: the same plan engine over the same
 * snapshot, with the spec as a new operator record. Returns the reconciler's first pass and the service's plan.
 */
export function planFor(state: SchedState, spec: ServiceSpec, view?: TrustView): Plan & { servicePlan?: ServicePlan } {
  const now = Date.now();
  // Hosts not alive now are taken as gone for longer than any fence: the plan shows their instances replaced.
  const lastAlive = new Map(state.members.filter((m) => m.verified).map((m) => [m.host, now]));
  const snapshot = toSnapshot(state, now, { lastAlive, since: 0, fenceGraceMs: 0, override: spec });
  const services = serviceInputs(state);
  const ref = { version: spec.version, record: DRY_RUN, by: '', deployedAt: `dry-run ${now}` };
  services.set(spec.name, { spec, ref });
  const out = planPass({
    snapshot,
    services,
    plans: state.plans,
    lastSeq: new Map([...state.history].map(([svc, list]) => [svc, list.at(-1)?.seq ?? 0])),
    specOf: (service, r) => (r.record === DRY_RUN ? spec : view === undefined ? undefined : specOfRef(view, service, r)),
  });
  const servicePlan = out.write.find((p) => p.service === spec.name) ?? state.plans.get(spec.name);
  return { ...out.plan, ...(servicePlan === undefined ? {} : { servicePlan }) };
}

const DRY_RUN = '(dry run)';

function printPlan(spec: ServiceSpec, current: ServiceSpec | undefined, plan: Plan & { servicePlan?: ServicePlan }, state: SchedState): void {
  const mine = plan.place.filter((p) => p.alloc.service === spec.name);
  const stops = plan.stop.filter((s) => s.service === spec.name);
  const running = [...state.assigns.values()].filter((a) => a.alloc.service === spec.name).length;
  // From the version the instances run (after a rollback, not the last spec written: the plan's target).
  const from = state.plans.get(spec.name)?.target.version ?? current?.version;
  print(`${spec.name}: ${current === undefined ? 'new service' : from === spec.version ? `version ${spec.version}` : `version ${from ?? '?'} -> ${spec.version}`}, count ${current?.count ?? 0} -> ${spec.count} (${running} placed now)\n`);
  const replaced = new Set(mine.flatMap((p) => (p.alloc.previous === undefined ? [] : [p.alloc.previous])));
  for (const p of mine) {
    const verb = p.reason === 'new' ? 'start' : p.reason === 'update' ? 'replace' : p.reason === 'drain' ? 'move' : p.reason === 'lost' ? 'replace (host lost)' : 'reschedule';
    const from = p.alloc.previous === undefined ? '' : ` (instead of ${p.alloc.previous}${hostOf(state, p.alloc.previous)})`;
    print(`  ${verb.padEnd(20)} ${spec.name}.${p.alloc.index} on ${p.alloc.host}${from}\n`);
  }
  for (const s of stops) if (!replaced.has(s.allocId)) print(`  ${'stop'.padEnd(20)} ${s.allocId} on ${s.host}: ${s.reason}\n`);
  for (const i of plan.infeasible) if (i.service === spec.name) print(`  CANNOT PLACE: ${i.message}\n`);
  for (const w of plan.warnings) print(`  warning: ${w}\n`);
  const sp = plan.servicePlan;
  if (sp !== undefined && sp.phases.length > 0) {
    print(`  plan: ${sp.kind}${sp.fromVersion === undefined || sp.kind === 'deploy' ? '' : ` ${sp.fromVersion} ->`} ${sp.toVersion}; ${sp.strategy.autoRevert ? 'rolls back by itself if it fails' : 'auto-revert off'}\n`);
    for (const ph of sp.phases) print(`    ${ph.name}: ${ph.steps.length} step${ph.steps.length === 1 ? '' : 's'}, ${ph.strategy}\n`);
  }
  if (mine.length === 0 && stops.length === 0 && plan.infeasible.every((i) => i.service !== spec.name)) print('  no change to instances now\n');
}

function hostOf(state: SchedState, allocId: string): string {
  const a = state.assigns.get(allocId);
  return a === undefined ? '' : ` on ${a.alloc.host}`;
}

/**
 * Waits until the change's plan is complete (every instance on the new version, healthy for minHealthy, the old
 * ones stopped), or, before the controller has made a plan, until every instance runs it healthy. Ends early, with an error, when the change's plan failed
 * (rolled back, or waiting for the operator after a failed step), and with success when healthy canaries wait for
 * promote (there is nothing more to wait for without the operator).
 */
async function waitHealthy(read: () => Promise<SchedState>, specs: readonly ServiceSpec[], deployedAt: ReadonlyMap<string, string>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const promotable = new Set<string>();
  for (;;) {
    const state = await read();
    const missing: string[] = [];
    for (const spec of specs) {
      const plan = state.plans.get(spec.name);
      const at = deployedAt.get(spec.name);
      // A count chosen within the scale bounds after this deploy makes a plan of its own, triggered by `<at>+scale@…`.
      if (plan !== undefined && at !== undefined && (plan.trigger.deployedAt === at || plan.trigger.deployedAt.startsWith(`${at}+scale@`))) {
        if (plan.kind === 'rollback')
          throw new BackplaneError('E_APPLY', `${spec.name}: version ${spec.version} failed and was rolled back: ${plan.log[0]?.message ?? plan.why ?? ''}`, { hint: `see: backplane plan ${spec.name} --history` });
        if (plan.failedAt !== undefined) throw new BackplaneError('E_APPLY', `${spec.name}: plan ${plan.id} failed: ${plan.why ?? ''}`, { hint: `see: backplane plan ${spec.name}` });
        if (plan.status === 'waiting' && plan.promote === 'no') {
          if (!promotable.has(spec.name)) print(`${spec.name}: canaries healthy; waiting for promote (backplane rollout promote ${spec.name})\n`);
          promotable.add(spec.name);
          continue;
        }
        // The change is done when its plan is: every step complete (healthy for minHealthy, old ones stopped).
        if (plan.status !== 'complete') {
          const steps = plan.phases.flatMap((p) => p.steps);
          missing.push(`${spec.name}: plan ${plan.id} ${plan.status}, ${steps.filter((x) => x.state === 'complete').length} of ${steps.length} steps complete`);
          continue;
        }
      }
      const ok = [...state.assigns.values()].filter((a) => {
        if (a.alloc.service !== spec.name || a.alloc.version !== spec.version) return false;
        const st = state.statuses.get(a.alloc.id)?.state;
        return st === 'healthy' || (spec.health === undefined && st === 'running');
      });
      const indexes = new Set(ok.map((a) => a.alloc.index));
      const want = specInForce(state, spec.name)?.spec.count ?? spec.count;
      if (indexes.size < want) missing.push(`${spec.name}: ${indexes.size} of ${want} healthy`);
    }
    if (missing.length === 0) {
      print(promotable.size === specs.length ? 'canaries healthy; the rest waits for promote\n' : promotable.size > 0 ? 'all healthy, except what waits for promote\n' : 'all healthy\n');
      return;
    }
    if (Date.now() > deadline) throw new BackplaneError('E_TIMEOUT', `not healthy within ${Math.round(timeoutMs / 1000)}s: ${missing.join('; ')}`, { hint: 'see `backplane service NAME` for each instance and its events' });
    await sleep(200);
  }
}
