import { z } from 'zod';
import { namespaceUsage, policyBodyOf, policyDocumentSchema, putPolicy, readPolicies, removePolicy, type PolicyEntry } from '../../scheduler/policy.js';
import { NAMESPACE_NAME } from '../../scheduler/spec-schema.js';
import type { SchedState } from '../../scheduler/state.js';
import { ApiError, defineOp, visibleTo, type OpContext } from '../ops.js';

/**
 * Namespaces: their quotas (which placement enforces), their defaults (which their services inherit for what their
 * specs do not write), and what each uses now. Reading is for viewers (a namespace-scoped token sees its own
 * namespace); setting and removing a policy is cluster policy, for admins not scoped to a namespace (a team's token
 * must not raise its own quota). The records and the rules are src/scheduler/policy.ts; docs/namespaces.md.
 */

const nsParam = () => z.string().regex(NAMESPACE_NAME, 'a namespace is 1-63 characters of a-z, 0-9 and "-", starting and ending with a letter or digit');

const useSchema = z.object({ cpu: z.number(), memory: z.number(), instances: z.number().int() });

export const namespaceRowSchema = z.object({
  name: z.string(),
  /** Unset: no limit on that dimension; absent: no quota at all. cpu in cores, memory in bytes. */
  quota: z.object({ cpu: z.number().optional(), memory: z.number().optional(), instances: z.number().int().optional() }).optional(),
  /** What services of the namespace inherit for the fields their specs do not write (update fields in the spec's units: ms). */
  defaults: z
    .object({
      update: z
        .object({
          maxParallel: z.number().int().optional(),
          minHealthyMs: z.number().optional(),
          healthyDeadlineMs: z.number().optional(),
          progressDeadlineMs: z.number().optional(),
          canary: z.number().int().optional(),
          autoPromote: z.boolean().optional(),
          autoRevert: z.boolean().optional(),
          startFirst: z.boolean().optional(),
        })
        .optional(),
      maxUnavailable: z.number().int().optional(),
    })
    .optional(),
  /** What its instances reserve now, counted as the quota counts it (one share per instance index). */
  used: useSchema,
  services: z.array(z.string()),
  /** When its policy was last set, and by which operator host; absent for a namespace without a policy. */
  updatedAt: z.string().optional(),
  by: z.string().optional(),
});
export type NamespaceRow = z.infer<typeof namespaceRowSchema>;

/** Every namespace that has a policy or a service, by name. */
export function namespaceRows(state: Pick<SchedState, 'assigns' | 'statuses' | 'services'>, policies: ReadonlyMap<string, PolicyEntry>): NamespaceRow[] {
  const usage = namespaceUsage(state);
  const names = [...new Set([...usage.keys(), ...policies.keys()])].sort();
  return names.map((name) => {
    const u = usage.get(name);
    const e = policies.get(name);
    return {
      name,
      ...(e?.policy.quota === undefined ? {} : { quota: e.policy.quota }),
      ...(e?.policy.defaults === undefined ? {} : { defaults: e.policy.defaults }),
      used: { cpu: Math.round((u?.cpu ?? 0) * 1000) / 1000, memory: u?.memory ?? 0, instances: u?.instances ?? 0 },
      services: [...(u?.services ?? [])],
      ...(e === undefined ? {} : { updatedAt: e.policy.updatedAt, by: e.by }),
    };
  });
}

async function rowsNow(ctx: OpContext): Promise<NamespaceRow[]> {
  const cluster = await ctx.cluster();
  const [state, read] = await Promise.all([cluster.readState(), readPolicies(cluster.store, cluster.view)]);
  return namespaceRows(state, read.policies);
}

export const namespacesList = defineOp({
  name: 'namespaces.list',
  method: 'GET',
  path: '/v1/namespaces',
  role: 'viewer',
  summary: 'List namespaces: each one\'s quota, defaults, services and what they use',
  input: z.object({}),
  output: z.array(namespaceRowSchema),
  mutates: false,
  run: async (ctx) => (await rowsNow(ctx)).filter((r) => visibleTo(ctx.caller, r.name)),
});

export const namespacesGet = defineOp({
  name: 'namespaces.get',
  method: 'GET',
  path: '/v1/namespaces/{ns}',
  role: 'viewer',
  summary: 'Show a namespace: its quota, defaults, services and what they use',
  input: z.object({ ns: nsParam() }),
  output: namespaceRowSchema,
  mutates: false,
  scope: async ({ ns }) => ns,
  run: async (ctx, { ns }) => {
    const row = (await rowsNow(ctx)).find((r) => r.name === ns);
    if (row === undefined) throw new ApiError(404, `no namespace "${ns}": it has no policy and no services`, { hint: 'see `backplane namespaces`; set one with `backplane namespace set NAME --memory 8G`' });
    return row;
  },
});

export const namespacesPut = defineOp({
  name: 'namespaces.put',
  method: 'PUT',
  path: '/v1/namespaces/{ns}',
  role: 'admin',
  summary: "Set a namespace's policy (quota and defaults), replacing what it had",
  // The path's namespace and the policy document (docs/namespaces.md): what the body leaves out, the policy no longer has.
  input: policyDocumentSchema().extend({ ns: nsParam() }),
  output: namespaceRowSchema,
  mutates: true,
  // No scope: a namespace's policy is the cluster's, never its own tokens' to change.
  run: async (ctx, input) => {
    const { ns, ...doc } = input;
    if (doc.name !== undefined && doc.name !== ns) throw new ApiError(400, `name: the document is for namespace "${doc.name}", not "${ns}"`, { hint: 'leave name out, or make it the namespace in the path' });
    const cluster = await ctx.cluster();
    const signer = await cluster.signer();
    await putPolicy(cluster.store, signer, policyBodyOf(ns, doc));
    const row = (await rowsNow(ctx)).find((r) => r.name === ns);
    if (row === undefined) throw new ApiError(503, `the policy of ${ns} was written but does not read back as this host's`, { hint: 'is this host still an operator? see `backplane hosts list`' });
    return row;
  },
});

export const namespacesDelete = defineOp({
  name: 'namespaces.delete',
  method: 'DELETE',
  path: '/v1/namespaces/{ns}',
  role: 'admin',
  summary: "Remove a namespace's policy: its services keep running, with no quota and the built-in defaults",
  input: z.object({ ns: nsParam() }),
  output: z.object({ name: z.string(), removed: z.literal(true) }),
  mutates: true,
  run: async (ctx, { ns }) => {
    const cluster = await ctx.cluster();
    const signer = await cluster.signer();
    const { policies } = await readPolicies(cluster.store, cluster.view);
    if (!policies.has(ns)) throw new ApiError(404, `namespace "${ns}" has no policy to remove`, { hint: 'see `backplane namespaces`' });
    // A signed tombstone, as for services: the removal is an operator's signed act, like the policy it ends.
    await removePolicy(cluster.store, signer, ns);
    return { name: ns, removed: true as const };
  },
});

export const NAMESPACE_OPS = [namespacesList, namespacesGet, namespacesPut, namespacesDelete] as const;
