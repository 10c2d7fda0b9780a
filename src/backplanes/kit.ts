/**
 * Helpers for backplanes of replicated stores (one primary, replicas), shared by the shipped redis and postgres
 * backplanes and free for others: parameter types, the primary-last rollout gate, the status of a failover, and the
 * member's first read of its instance API.
 */
import { z } from 'zod';
import type { InstanceClient, SelfInfo } from '../api/instance-client.js';
import { parseSize } from '../resources/svc-schema.js';
import type { AppGate, AppStatus, Member, ServiceView } from './sdk.js';

/** A memory size (bytes, or "64M", "1G") of at least `minBytes`, for `what` (named in errors). */
export function sizeParam(what: string, minBytes: number) {
  return z.union([z.number(), z.string()]).transform((v, ctx) => {
    const n = parseSize(v);
    if (n === undefined) {
      ctx.addIssue({ code: 'custom', message: `"${String(v)}" is not a size; write bytes (${minBytes}) or a value with a unit (64M, 1G)` });
      return z.NEVER;
    }
    if (n < minBytes) {
      ctx.addIssue({ code: 'custom', message: `memory ${String(v)} is too small for ${what}: at least ${Math.ceil(minBytes / 1048576)}M` });
      return z.NEVER;
    }
    return n;
  });
}

/** Cores per member: a number, or millicores ("500m"). */
export const cpuParam = z.union([z.number().positive(), z.string().regex(/^(\d+m|\d+(\.\d+)?)$/, 'cpu is cores (0.5) or millicores ("500m")')]);

/**
 * Replicas first, the primary last; the primary held back while it is the primary on an old version (the
 * backplane's switchover releases it: once another member is primary, this one is a replica like the others).
 */
export function primaryLastGate(all: readonly Member[], svc: ServiceView, primary: Member | undefined): AppGate {
  const pIndex = primary?.index;
  const indexes = [...new Set(all.filter((m) => !m.stopping).map((m) => m.index))].sort((a, b) => a - b);
  const order = [...indexes.filter((i) => i !== pIndex), ...(pIndex === undefined ? [] : [pIndex])];
  const hold = pIndex !== undefined && primary !== undefined && primary.version !== svc.version && svc.count > 1;
  return { order, ...(hold ? { hold: [pIndex] } : {}) };
}

/** The zod schema of a failover kept in a backplane's memory (FailoverMemory plus the milestones already logged). */
export const failoverMemorySchema = z.object({
  at: z.number(),
  from: z.string().optional(),
  to: z.string(),
  reason: z.string(),
  timeline: z.array(z.object({ at: z.number(), message: z.string() })),
  /** Milestones already written to the timeline (e.g. 'writable', 'rejoined', 'linked'). */
  done: z.array(z.string()),
});

/** What a backplane remembers of its last failover (or switchover), as `backplane app` shows it. */
export interface FailoverMemory {
  readonly at: number;
  readonly from?: string | undefined;
  readonly to: string;
  readonly reason: string;
  readonly timeline: readonly { readonly at: number; readonly message: string }[];
}

/** The status's `lastFailover`, bounded as the controller takes it; none while no member was chosen yet. */
export function lastFailoverStatus(f: FailoverMemory | undefined): Pick<AppStatus, 'lastFailover'> {
  if (f === undefined || f.to === '') return {};
  return { lastFailover: { at: f.at, ...(f.from === undefined ? {} : { from: f.from }), to: f.to, reason: f.reason.slice(0, 500), timeline: f.timeline.slice(-50) } };
}

/** The member's first read of itself; the agent may still be writing its assignment's API state when it starts. */
export async function selfWithRetry(api: InstanceClient, attempts: number, everyMs = 200): Promise<SelfInfo> {
  for (let i = 0; ; i++) {
    try {
      return await api.self();
    } catch (err) {
      if (i >= attempts) throw err;
      await new Promise((r) => setTimeout(r, everyMs));
    }
  }
}
