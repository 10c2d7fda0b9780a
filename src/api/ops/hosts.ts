import { z } from 'zod';
import { fingerprint } from '../../cluster/identity.js';
import { keys, parseJoinKey } from '../../cluster/keys.js';
import { parseJoinRequest } from '../../cluster/trust.js';
import type { DrainRecord } from '../../scheduler/records.js';
import { capacityOf, type SchedState } from '../../scheduler/state.js';
import { parseDuration } from '../../util/duration.js';
import { ApiError, defineOp, type OpContext } from '../ops.js';
import { resourcesSchema } from './shared.js';

/**
 * The hosts as a pool (capacity, reserved, free, instances, drain state), which hosts the cluster believes, and the
 * drain lever. Approving, revoking and join tokens need the CA key and stay local commands (cli/hosts.ts).
 */

export const hostRowSchema = z.object({
  host: z.string(),
  alive: z.boolean(),
  draining: z.boolean(),
  capacity: resourcesSchema,
  reserved: resourcesSchema,
  free: resourcesSchema,
  instances: z.number().int(),
  labels: z.record(z.string(), z.string()),
});
export type HostRow = z.infer<typeof hostRowSchema>;

function round(n: number): number {
  return Math.round(n * 1000) / 1000;
}

export function hostRows(state: SchedState): HostRow[] {
  const rows = new Map<string, HostRow>();
  const used = new Map<string, { cpu: number; memory: number; n: number }>();
  for (const a of state.assigns.values()) {
    const u = used.get(a.alloc.host) ?? { cpu: 0, memory: 0, n: 0 };
    u.cpu += a.alloc.resources.cpu;
    u.memory += a.alloc.resources.memory;
    u.n++;
    used.set(a.alloc.host, u);
  }
  for (const m of state.members) {
    if (!m.verified || m.record === undefined) continue;
    const cap = capacityOf(m);
    const u = used.get(m.host) ?? { cpu: 0, memory: 0, n: 0 };
    rows.set(m.host, {
      host: m.host,
      alive: true,
      draining: state.drains.get(m.host)?.drain === true,
      capacity: { cpu: cap.cpu, memory: cap.memory },
      reserved: { cpu: round(u.cpu), memory: u.memory },
      free: { cpu: round(cap.cpu - u.cpu), memory: cap.memory - u.memory },
      instances: u.n,
      labels: { ...m.record.labels },
    });
  }
  for (const [host, u] of used) {
    if (rows.has(host)) continue;
    rows.set(host, { host, alive: false, draining: state.drains.get(host)?.drain === true, capacity: { cpu: 0, memory: 0 }, reserved: { cpu: round(u.cpu), memory: u.memory }, free: { cpu: 0, memory: 0 }, instances: u.n, labels: {} });
  }
  return [...rows.values()].sort((a, b) => a.host.localeCompare(b.host));
}

export const hostsList = defineOp({
  name: 'hosts.list',
  method: 'GET',
  path: '/v1/hosts',
  role: 'viewer',
  summary: 'List the hosts as a pool: capacity, reserved, free, instances, drain state, labels',
  input: z.object({}),
  output: z.array(hostRowSchema),
  mutates: false,
  run: async (ctx) => hostRows(await (await ctx.cluster()).readState()),
});

export const trustSchema = z.object({
  ca: z.string().nullable(),
  serial: z.number().int(),
  hosts: z.array(z.object({ host: z.string(), state: z.string(), since: z.string(), fingerprint: z.string(), operator: z.boolean() })),
  pending: z.array(z.object({ host: z.string(), fingerprint: z.string(), token: z.string().nullable(), at: z.string() })),
});

export const hostsTrust = defineOp({
  name: 'hosts.trust',
  method: 'GET',
  path: '/v1/hosts/trust',
  role: 'viewer',
  summary: 'List the approved, revoked and pending hosts, with their key fingerprints',
  input: z.object({}),
  output: trustSchema,
  mutates: false,
  run: async (ctx) => {
    const { store, view } = await ctx.cluster();
    const { kvs } = await store.list(keys.joinsPrefix);
    const pending = kvs.flatMap((kv) => {
      const host = parseJoinKey(kv.key);
      const req = parseJoinRequest(kv.value);
      return host === undefined || req === undefined || req.host !== host || view.keyOf(host) === req.publicKey ? [] : [req];
    });
    return {
      ca: fingerprint(view.caPublicKey),
      serial: view.serial,
      hosts: Object.entries(view.hosts.hosts).map(([host, e]) => ({ host, state: e.state, since: e.since, fingerprint: fingerprint(e.publicKey), operator: e.operator === true })),
      pending: pending.map((p) => ({ host: p.host, fingerprint: fingerprint(p.publicKey), token: p.token ?? null, at: p.at })),
    };
  },
});

const drainOutput = z.object({ host: z.string(), draining: z.boolean(), deadline: z.number().optional() });

async function writeDrain(ctx: OpContext, host: string, record: DrainRecord): Promise<void> {
  const cluster = await ctx.cluster();
  const signer = await cluster.signer();
  if (cluster.view.state(host) === 'unknown') throw new ApiError(404, `no host "${host}" in the cluster`, { code: 'E_USAGE', hint: 'see `backplane hosts`' });
  const key = keys.drain(host);
  await cluster.store.put(key, signer.sign(key, JSON.stringify(record)));
}

export const hostsDrain = defineOp({
  name: 'hosts.drain',
  method: 'POST',
  path: '/v1/hosts/{host}/drain',
  role: 'operator',
  summary: "Drain a host: move every instance off it, within each service's disruption budget",
  input: z.object({ host: z.string().min(1).max(253), deadline: z.string().optional() }),
  output: drainOutput,
  mutates: true,
  run: async (ctx, { host, deadline }) => {
    const ms = deadline === undefined ? undefined : parseDuration(deadline);
    if (deadline !== undefined && ms === undefined) throw new ApiError(400, `--deadline "${deadline}" is not a duration`, { hint: 'e.g. --deadline 10m' });
    const at = ms === undefined ? undefined : Date.now() + ms;
    await writeDrain(ctx, host, { drain: true, ...(at === undefined ? {} : { deadline: at }), at: new Date().toISOString() });
    return { host, draining: true, ...(at === undefined ? {} : { deadline: at }) };
  },
});

export const hostsUndrain = defineOp({
  name: 'hosts.undrain',
  method: 'POST',
  path: '/v1/hosts/{host}/undrain',
  role: 'operator',
  summary: 'Undrain a host: let the scheduler place instances on it again',
  input: z.object({ host: z.string().min(1).max(253) }),
  output: drainOutput,
  mutates: true,
  run: async (ctx, { host }) => {
    await writeDrain(ctx, host, { drain: false, at: new Date().toISOString() });
    return { host, draining: false };
  },
});

export const HOST_OPS = [hostsList, hostsTrust, hostsDrain, hostsUndrain] as const;
