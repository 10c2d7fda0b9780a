import { z } from 'zod';
import { keys } from '../../cluster/keys.js';
import type { AppRecord, ServiceRecord } from '../../scheduler/records.js';
import type { SchedState } from '../../scheduler/state.js';
import { ApiError, defineOp, visibleTo, type OpContext } from '../ops.js';
import { nameParam, specNamespace } from './shared.js';

/**
 * Application objects (`kind: redis`, ...) and what their backplanes say about them — which member is the primary,
 * replication lag, the last failover step by step — beside what the platform knows of each member (host, state,
 * what the instance itself reported).
 */

export const appViewSchema = z.object({
  name: z.string(),
  namespace: z.string(),
  kind: z.string(),
  removed: z.boolean(),
  services: z.array(z.string()),
  deployedAt: z.string(),
  params: z.record(z.string(), z.unknown()),
  summary: z.string().optional(),
  error: z.string().optional(),
  fields: z.record(z.string(), z.union([z.string(), z.number(), z.boolean()])),
  /** entry -> "allocId host:port" of each member it lists. */
  discovery: z.record(z.string(), z.array(z.string())),
  members: z.array(
    z.object({ allocId: z.string(), service: z.string(), host: z.string(), state: z.string(), role: z.string().optional(), message: z.string().optional(), report: z.unknown().optional() }),
  ),
  lastFailover: z
    .object({ at: z.number(), from: z.string().optional(), to: z.string(), reason: z.string(), timeline: z.array(z.object({ at: z.number(), message: z.string() })) })
    .optional(),
});
export type AppView = z.infer<typeof appViewSchema>;

/** An object's namespace: the one of the services it became (they inherit it), else `default`. */
function appNamespace(state: SchedState, record: AppRecord): string {
  if ('removed' in record) return 'default';
  const ns = (record.object as { namespace?: unknown }).namespace;
  if (typeof ns === 'string') return ns;
  for (const s of record.services) {
    const spec = state.services.get(s)?.spec;
    if (spec !== undefined) return specNamespace(spec);
  }
  return 'default';
}

export function appView(state: SchedState, name: string, record: AppRecord): AppView {
  const st = state.appStates.get(name);
  const removed = 'removed' in record;
  const services = removed ? [] : record.services;
  const members: AppView['members'][number][] = [];
  for (const a of state.assigns.values()) {
    if (!services.includes(a.alloc.service) || a.spec.app?.name !== name) continue;
    const s = state.statuses.get(a.alloc.id);
    const own = st?.status?.members?.[a.alloc.id];
    const report = s?.host === a.alloc.host ? s.app : undefined;
    const role = own?.role ?? (typeof report?.state?.['role'] === 'string' ? report.state['role'] : undefined);
    const message = own?.message ?? report?.message;
    members.push({
      allocId: a.alloc.id,
      service: a.alloc.service,
      host: a.alloc.host,
      state: s?.host === a.alloc.host ? s.state : 'pending',
      ...(role === undefined ? {} : { role }),
      ...(message === undefined ? {} : { message }),
      ...(report?.state === undefined ? {} : { report: report.state }),
    });
  }
  members.sort((x, y) => (x.allocId < y.allocId ? -1 : 1));
  const discovery: Record<string, string[]> = {};
  for (const [entry, targets] of Object.entries(st?.discovery ?? {})) {
    discovery[entry] = targets.map((t) => {
      const a = state.assigns.get(t.allocId)?.alloc;
      return a === undefined ? `${t.allocId} (gone)` : `${t.allocId} ${a.host}:${a.ports[t.port] ?? '?'}`;
    });
  }
  const lastFailover = st?.status?.lastFailover;
  return {
    name,
    namespace: appNamespace(state, record),
    kind: removed ? (st?.kind ?? '?') : record.object.kind,
    removed,
    services: [...services],
    deployedAt: removed ? record.at : record.deployedAt,
    params: removed ? {} : record.object.params,
    ...(st?.status?.summary === undefined ? {} : { summary: st.status.summary }),
    ...(st?.error === undefined ? {} : { error: `${st.error.message} (since ${new Date(st.error.at).toISOString()})` }),
    fields: st?.status?.fields ?? {},
    discovery,
    members,
    ...(lastFailover === undefined ? {} : { lastFailover: { ...lastFailover, timeline: lastFailover.timeline.map((t) => ({ ...t })) } }),
  };
}


async function appScope(input: { readonly name: string }, ctx: OpContext): Promise<string | undefined> {
  const state = await (await ctx.cluster()).readState();
  const rec = state.apps.get(input.name)?.record;
  return rec === undefined ? undefined : appNamespace(state, rec);
}

export const appsList = defineOp({
  name: 'apps.list',
  method: 'GET',
  path: '/v1/apps',
  role: 'viewer',
  summary: 'List the application objects (kind: redis, postgres, ...) and their state',
  input: z.object({}),
  output: z.array(appViewSchema),
  mutates: false,
  run: async (ctx) => {
    const state = await (await ctx.cluster()).readState();
    return [...state.apps].map(([name, { record }]) => appView(state, name, record)).filter((v) => visibleTo(ctx.caller, v.namespace));
  },
});

function noApp(name: string): ApiError {
  return new ApiError(404, `no application object "${name}"`, { code: 'E_USAGE', hint: 'see `backplane apps`' });
}

export const appsGet = defineOp({
  name: 'apps.get',
  method: 'GET',
  path: '/v1/apps/{name}',
  role: 'viewer',
  summary: "Show one application object: its backplane's view, members, last failover",
  input: z.object({ name: nameParam() }),
  output: appViewSchema,
  mutates: false,
  scope: appScope,
  run: async (ctx, { name }) => {
    const state = await (await ctx.cluster()).readState();
    const rec = state.apps.get(name)?.record;
    if (rec === undefined || !visibleTo(ctx.caller, appNamespace(state, rec))) throw noApp(name);
    return appView(state, name, rec);
  },
});

export const appsRemove = defineOp({
  name: 'apps.remove',
  method: 'DELETE',
  path: '/v1/apps/{name}',
  role: 'operator',
  summary: 'Remove an application object and every service it became',
  input: z.object({ name: nameParam() }),
  output: z.object({ name: z.string(), services: z.array(z.string()) }),
  mutates: true,
  scope: appScope,
  run: async (ctx, { name }) => {
    const cluster = await ctx.cluster();
    const signer = await cluster.signer();
    const state = await cluster.readState();
    const rec = state.apps.get(name)?.record;
    if (rec === undefined || 'removed' in rec) throw noApp(name);
    const at = new Date().toISOString();
    // Signed tombstones, as for a service: a deleted key could be anyone's doing.
    for (const svc of rec.services) {
      const key = keys.service(svc);
      if (state.services.get(svc)?.spec?.app?.name !== name) continue;
      await cluster.store.put(key, signer.sign(key, JSON.stringify({ removed: true, name: svc, at } satisfies ServiceRecord)));
    }
    const key = keys.app(name);
    await cluster.store.put(key, signer.sign(key, JSON.stringify({ removed: true, name, at } satisfies AppRecord)));
    return { name, services: [...rec.services] };
  },
});

export const APP_OPS = [appsList, appsGet, appsRemove] as const;
