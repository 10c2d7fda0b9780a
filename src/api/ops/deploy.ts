import { z } from 'zod';
import { expandObjects, type ExpandedObject } from '../../backplanes/objects.js';
import { keys } from '../../cluster/keys.js';
import type { TrustView } from '../../cluster/trust.js';
import { ValidationErrors } from '../../errors.js';
import type { ServicePlan } from '../../scheduler/plan-types.js';
import { planPass } from '../../scheduler/plans.js';
import { effectiveSpec } from '../../scheduler/policy.js';
import type { AppRecord, ServiceRecord } from '../../scheduler/records.js';
import { readDeployData, readDeployText } from '../../scheduler/spec.js';
import { serviceInputs, specOfRefIn, toSnapshot, type SchedState } from '../../scheduler/state.js';
import type { Plan, ServiceSpec } from '../../scheduler/types.js';
import { canonicalJson } from '../../util/canonical.js';
import { ApiError, defineOp, type OpContext } from '../ops.js';
import { specNamespace } from './shared.js';

/**
 * `services.deploy`: the deploy files (their text; a TS/JS module as what it evaluated to on the caller's machine)
 * are validated with the same parser as ever (every error with its file:line; nothing is written unless all of it is
 * valid), the plan the controller would make is computed by the same pure reconciler over the same snapshot it would
 * read, and — unless a dry run — the specs are written signed by the host running the op.
 */

/** At most this much text per file: a deploy file is a spec, not a payload (the graph files' limit is larger). */
const MAX_FILE_CHARS = 4 * 1024 * 1024;

const fileSchema = z.union([
  z.object({ name: z.string().min(1).max(4096), text: z.string().max(MAX_FILE_CHARS) }),
  z.object({ name: z.string().min(1).max(4096), data: z.unknown() }),
]);

const deployInput = z.object({ files: z.array(fileSchema).min(1).max(100), dryRun: z.boolean().optional() });
type DeployInput = z.infer<typeof deployInput>;

const planOutline = z.object({
  kind: z.string(),
  fromVersion: z.string().optional(),
  toVersion: z.string(),
  autoRevert: z.boolean(),
  phases: z.array(z.object({ name: z.string(), steps: z.number().int(), strategy: z.string() })),
});

export const deployServiceSchema = z.object({
  name: z.string(),
  namespace: z.string(),
  version: z.string(),
  count: z.number().int(),
  current: z.object({ version: z.string(), count: z.number().int() }).optional(),
  /** The version the instances run now (after a rollback: the plan's target, not the last spec written). */
  from: z.string().optional(),
  /** Instances placed now. */
  running: z.number().int(),
  place: z.array(z.object({ verb: z.string(), instance: z.string(), host: z.string(), instead: z.string().optional(), insteadHost: z.string().optional() })),
  stop: z.array(z.object({ allocId: z.string(), host: z.string(), reason: z.string() })),
  infeasible: z.array(z.string()),
  warnings: z.array(z.string()),
  plan: planOutline.optional(),
  /** deployed: written now; unchanged: exactly this spec is deployed already; dry-run: nothing written. */
  outcome: z.enum(['deployed', 'unchanged', 'dry-run']),
  /** The record's deployedAt (what `services.progress` takes) when deployed. */
  deployedAt: z.string().optional(),
});
export type DeployService = z.infer<typeof deployServiceSchema>;

export const deployOutput = z.object({
  dryRun: z.boolean(),
  objects: z.array(z.object({ name: z.string(), kind: z.string(), status: z.enum(['new', 'changed', 'unchanged']), services: z.array(z.object({ name: z.string(), count: z.number().int() })) })),
  services: z.array(deployServiceSchema),
  /** Some instance cannot be placed (a dry run then exits 1). */
  infeasible: z.boolean(),
});
export type DeployOutput = z.infer<typeof deployOutput>;

interface Parsed {
  readonly specs: readonly { readonly spec: ServiceSpec; readonly source: string }[];
  readonly objects: readonly { readonly object: ExpandedObject; readonly source: string }[];
}

/** Parsed once per call: `scope` and `run` see the same input object. */
const parsedOf = new WeakMap<DeployInput, Promise<Parsed>>();

function parse(input: DeployInput): Promise<Parsed> {
  let p = parsedOf.get(input);
  if (p === undefined) {
    p = parseFiles(input);
    parsedOf.set(input, p);
  }
  return p;
}

async function parseFiles(input: DeployInput): Promise<Parsed> {
  const specs: { spec: ServiceSpec; source: string }[] = [];
  const objects: { object: ExpandedObject; source: string }[] = [];
  try {
    for (const f of input.files) {
      const file = 'text' in f ? readDeployText(f.name, f.text) : readDeployData(f.name, f.data);
      specs.push(...file.services.map((spec) => ({ spec, source: f.name })));
      // Application objects (`kind: redis`): their backplanes validate and expand them into services.
      for (const o of await expandObjects(file.objects)) {
        objects.push({ object: o, source: f.name });
        specs.push(...o.services.map((spec) => ({ spec, source: f.name })));
      }
    }
  } catch (err) {
    // Every problem with its file:line, as one answer (400): the same text over the API as on a direct store.
    if (err instanceof ValidationErrors) {
      const n = err.errors.length;
      throw new ApiError(400, `${n} error${n === 1 ? '' : 's'} in the deploy file${input.files.length === 1 ? '' : 's'}; nothing was deployed:\n${err.format()}`, { code: 'E_USAGE', cause: err });
    }
    throw err;
  }
  return { specs, objects };
}

export const servicesDeploy = defineOp({
  name: 'services.deploy',
  method: 'POST',
  path: '/v1/deploy',
  role: 'operator',
  summary: 'Deploy services and application objects from spec files: validate, show what would change, and (unless a dry run) write them',
  input: deployInput,
  output: deployOutput,
  mutates: true,
  redact: ['files'],
  scope: async (input) => [...new Set((await parse(input)).specs.map((s) => specNamespace(s.spec)))],
  run: async (ctx, input) => deploy(ctx, input),
});

async function deploy(ctx: OpContext, input: DeployInput): Promise<DeployOutput> {
  const { specs, objects } = await parse(input);
  const dryRun = input.dryRun === true;
  const cluster = await ctx.cluster();
  const signer = dryRun ? undefined : await cluster.signer();
  const state = await cluster.readState();
  for (const { spec } of specs) {
    // An object may not take over a service someone else declared (by hand, or another object).
    const cur = state.services.get(spec.name);
    const owner = cur?.spec?.app?.name;
    if (cur?.spec !== undefined && owner !== spec.app?.name) {
      throw new ApiError(409, `service "${spec.name}" already exists${owner === undefined ? ' (deployed on its own)' : ` (part of ${owner})`}`, {
        code: 'E_DUPLICATE',
        hint: 'give the object or service another name, or remove the existing one first; nothing was deployed',
      });
    }
  }
  const out: DeployOutput = { dryRun, objects: [], services: [], infeasible: false };
  for (const { object: o, source } of objects) {
    const prev = state.apps.get(o.object.name)?.record;
    const same = prev !== undefined && !('removed' in prev) && canonicalJson(prev.object) === canonicalJson(o.object) && canonicalJson(prev.services) === canonicalJson(o.services.map((x) => x.name));
    out.objects.push({ name: o.object.name, kind: o.object.kind, status: prev === undefined || 'removed' in prev ? 'new' : same ? 'unchanged' : 'changed', services: o.services.map((x) => ({ name: x.name, count: x.count })) });
    if (signer === undefined || same) continue;
    const key = keys.app(o.object.name);
    const record: AppRecord = { object: o.object, services: o.services.map((x) => x.name), source, deployedAt: new Date().toISOString() };
    await cluster.store.put(key, signer.sign(key, JSON.stringify(record)));
  }
  for (const { spec, source } of specs) {
    const current = state.services.get(spec.name)?.spec;
    const plan = planFor(state, spec, cluster.view);
    const view = planView(spec, current, plan, state);
    if (view.infeasible.length > 0) out.infeasible = true;
    if (signer === undefined) {
      out.services.push({ ...view, outcome: 'dry-run' });
      continue;
    }
    // The version leaves out what rolls nothing (the update policy, the namespace, ...): a change there is a change too.
    if (current !== undefined && canonicalJson(current) === canonicalJson(spec)) {
      out.services.push({ ...view, outcome: 'unchanged' });
      continue;
    }
    const key = keys.service(spec.name);
    const record: ServiceRecord = { spec, source, deployedAt: new Date().toISOString() };
    await cluster.store.put(key, signer.sign(key, JSON.stringify(record)));
    out.services.push({ ...view, outcome: 'deployed', deployedAt: record.deployedAt });
  }
  return out;
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
  // As the controller reads it: with its namespace's defaults for what it does not write (policy.ts).
  const effective = effectiveSpec(spec, state.policies);
  services.set(spec.name, { spec: effective, ref });
  const out = planPass({
    snapshot,
    services,
    plans: state.plans,
    lastSeq: new Map([...state.history].map(([svc, list]) => [svc, list.at(-1)?.seq ?? 0])),
    specOf: (service, r) => (r.record === DRY_RUN ? effective : view === undefined ? undefined : specOfRefIn(state, view, service, r)),
  });
  const servicePlan = out.write.find((p) => p.service === spec.name) ?? state.plans.get(spec.name);
  return { ...out.plan, ...(servicePlan === undefined ? {} : { servicePlan }) };
}

const DRY_RUN = '(dry run)';

/** What the plan does to `spec`'s instances, for the CLI to print (cli/deploy.ts printPlan). */
function planView(spec: ServiceSpec, current: ServiceSpec | undefined, plan: Plan & { servicePlan?: ServicePlan }, state: SchedState): Omit<DeployService, 'outcome' | 'deployedAt'> {
  const mine = plan.place.filter((p) => p.alloc.service === spec.name);
  const stops = plan.stop.filter((s) => s.service === spec.name);
  const replaced = new Set(mine.flatMap((p) => (p.alloc.previous === undefined ? [] : [p.alloc.previous])));
  const from = state.plans.get(spec.name)?.target.version ?? current?.version;
  const sp = plan.servicePlan;
  return {
    name: spec.name,
    namespace: specNamespace(spec),
    version: spec.version,
    count: spec.count,
    ...(current === undefined ? {} : { current: { version: current.version, count: current.count } }),
    ...(from === undefined ? {} : { from }),
    running: [...state.assigns.values()].filter((a) => a.alloc.service === spec.name).length,
    place: mine.map((p) => {
      const verb = p.reason === 'new' ? 'start' : p.reason === 'update' ? 'replace' : p.reason === 'drain' ? 'move' : p.reason === 'lost' ? 'replace (host lost)' : 'reschedule';
      const prevHost = p.alloc.previous === undefined ? undefined : state.assigns.get(p.alloc.previous)?.alloc.host;
      return {
        verb,
        instance: `${spec.name}.${p.alloc.index}`,
        host: p.alloc.host,
        ...(p.alloc.previous === undefined ? {} : { instead: p.alloc.previous }),
        ...(prevHost === undefined ? {} : { insteadHost: prevHost }),
      };
    }),
    stop: stops.filter((s) => !replaced.has(s.allocId)).map((s) => ({ allocId: s.allocId, host: s.host, reason: s.reason })),
    infeasible: plan.infeasible.filter((i) => i.service === spec.name).map((i) => i.message),
    warnings: [...plan.warnings],
    ...(sp === undefined || sp.phases.length === 0
      ? {}
      : {
          plan: {
            kind: sp.kind,
            ...(sp.fromVersion === undefined ? {} : { fromVersion: sp.fromVersion }),
            toVersion: sp.toVersion,
            autoRevert: sp.strategy.autoRevert,
            phases: sp.phases.map((ph) => ({ name: ph.name, steps: ph.steps.length, strategy: ph.strategy })),
          },
        }),
  };
}

export const DEPLOY_OPS = [servicesDeploy] as const;
