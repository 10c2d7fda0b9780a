import { z } from 'zod';
import { BackplaneError } from '../errors.js';
import { defineKind } from './types.js';
import { once } from '../util/once.js';

/** The kv kind's parameters, built on first use (a graph without one does not pay for them at start-up). */
const paramsSchema = once(() =>
  z
    .strictObject({
      key: z
        .string()
        .min(1)
        .max(255)
        .regex(/^[^\0/]+$/, 'a key is one path segment: no "/" or NUL')
        .meta({ description: 'the key, under kv/<this host>/ (default: the resource name)' }),
      value: z.string().max(1 << 20).optional().meta({ description: 'the value; required unless state is absent' }),
      state: z.enum(['present', 'absent']).default('present').meta({ description: 'absent withdraws the key' }),
    })
    .superRefine((p, ctx) => {
      if (p.state === 'present' && p.value === undefined) ctx.addIssue({ code: 'custom', path: ['value'], message: 'a value is required (or state: absent)' });
    }),
);

/**
 * A value this host publishes in the cluster store (mgmt's `kv`). It lives under `kv/<host>/<key>`, signed with the
 * host's key like its exports, so every reader can tell who wrote it and nobody else can write it; it goes with the
 * host's lease, as exports do. mgmt's kv is one cluster-wide namespace that any host may overwrite: here each host
 * owns its keys, and `backplane cluster kv` shows every host's values (verified).
 *
 * The store is reached only through ResourceWorld.cluster, the narrow handle the agent gives this kind.
 */
export const kvKind = defineKind({
  kind: 'kv',
  description: "publishes a value under this host's name in the cluster store, signed (mgmt's kv)",
  defaults: (name) => ({ key: name }),
  get schema() {
    return paramsSchema();
  },
  manages: (p) => `kv ${p.key}`,
  collect: { power: { key: 'which of this host’s keys is written' }, fromName: ['key'] },
  create: (_id, p, world) => {
    const cluster = world.cluster;
    const want = p.state === 'absent' ? undefined : p.value;
    let stop: (() => void) | undefined;
    return {
      async watch({ signal, ready, changed }) {
        if (cluster === undefined) return ready();
        stop = cluster.watch(p.key, () => changed('the store’s value changed'));
        ready();
        await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
        stop();
      },
      async checkApply({ apply, signal }) {
        if (cluster === undefined) {
          throw new BackplaneError('E_APPLY', 'kv needs the agent’s cluster store', { hint: 'kv resources run under `backplane run`' });
        }
        const have = await cluster.get(p.key, signal);
        if (have === want) return { converged: true, changes: [] };
        const change = want === undefined ? 'withdrawn' : have === undefined ? 'set' : 'value changed';
        if (apply) await cluster.set(p.key, want, signal);
        return { converged: false, changes: [change] };
      },
      async close(reason) {
        stop?.();
        // A removed kv is withdrawn; on shutdown the lease takes it, and a restarted agent publishes it again.
        if (reason === 'removed' && cluster !== undefined) await cluster.set(p.key, undefined, AbortSignal.timeout(5000)).catch(() => undefined);
      },
    };
  },
});
