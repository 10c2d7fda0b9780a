import { z } from 'zod';
import { findBackplane, loadBackplane, searchPath, shippedKinds } from '../../backplanes/registry.js';
import { readEvents } from '../../scheduler/state.js';
import { defineOp, q, visibleTo } from '../ops.js';
import { namespaceOf } from './shared.js';

/** The controller's events (placements, failures, reschedules, plan steps), and the backplanes this host can run. */

export const eventSchema = z.object({ at: z.number(), service: z.string(), message: z.string(), allocId: z.string().optional(), host: z.string().optional() });

export const eventsList = defineOp({
  name: 'events.list',
  method: 'GET',
  path: '/v1/events',
  role: 'viewer',
  summary: "List the controller's events, oldest first: of one service, the latest `limit`",
  input: z.object({ service: z.string().min(1).optional(), limit: q.int(0, 10_000).optional() }),
  output: z.array(eventSchema),
  mutates: false,
  run: async (ctx, input) => {
    const cluster = await ctx.cluster();
    const state = ctx.caller.namespace === undefined ? undefined : await cluster.readState();
    const all = await readEvents(cluster.store, cluster.view, input.service === undefined ? {} : { service: input.service });
    const seen = state === undefined ? all : all.filter((e) => visibleTo(ctx.caller, namespaceOf(state, e.service)));
    const limit = input.limit ?? 100;
    return (limit <= 0 ? [] : seen.slice(-limit)).map((e) => ({ ...e }));
  },
});

export const backplanesList = defineOp({
  name: 'backplanes.list',
  method: 'GET',
  path: '/v1/backplanes',
  role: 'viewer',
  summary: 'List the application backplanes this host can run (shipped, and on BACKPLANE_PATH)',
  input: z.object({}),
  output: z.object({ backplanes: z.array(z.object({ kind: z.string(), description: z.string() })), path: z.array(z.string()) }),
  mutates: false,
  run: async () => {
    const backplanes: { kind: string; description: string }[] = [];
    for (const kind of shippedKinds()) {
      const ref = await findBackplane(kind);
      const def = ref === undefined ? undefined : await loadBackplane(ref);
      backplanes.push({ kind, description: def?.description ?? '' });
    }
    return { backplanes, path: [...searchPath()] };
  },
});

export const EVENT_OPS = [eventsList, backplanesList] as const;
