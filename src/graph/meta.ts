import { z } from 'zod';
import { once } from '../util/once.js';
import { duration } from './schema-util.js';

/**
 * Metaparams are engine policy, declared per resource and the same for every kind (mgmt's lesson: a kind never
 * re-implements retries, polling or locking itself).
 */

/**
 * What a resource that declares no meta gets: metaSchema().parse(undefined), known without building the schema (a
 * test holds them equal), so that a graph whose resources declare none never loads zod (scripts/build.mjs).
 */
// Frozen, array included: every resource without meta may end up sharing it, and the schema's default copies it.
export const META_DEFAULTS: { retry: number; delay: number; poll: number; sema: string[]; noop: boolean; autoedge: boolean } = Object.freeze({
  retry: 0,
  delay: 0,
  poll: 0,
  sema: Object.freeze([]) as unknown as string[],
  noop: false,
  autoedge: true,
});

/** The schema of a resource's declared meta, built at first use. */
export const metaSchema = once(() =>
  z
    .strictObject({
      retry: z.number().int().min(-1).default(0).meta({ description: 'retries after a failed check/apply; -1 = forever' }),
      delay: duration().default(0).meta({ description: 'wait between retries' }),
      poll: duration().default(0).meta({ description: 'if > 0, re-check on this interval instead of using the native watch' }),
      sema: z
        .array(z.string().regex(/^[^:]+(:\d+)?$/, 'must be "name" or "name:count"'))
        .default([])
        .meta({ description: 'named semaphores to hold while applying, e.g. ["apt:1"]' }),
      noop: z.boolean().default(false).meta({ description: 'check this resource but never change it' }),
      autoedge: z.boolean().default(true).meta({ description: 'add automatic dependencies (e.g. a file on its parent directory)' }),
      limit: z
        .number()
        .positive()
        .finite()
        .optional()
        .meta({ description: 'at most this many check/apply runs per second (e.g. 0.5: one every 2 s); no limit when left out' }),
      burst: z
        .number()
        .int()
        .min(1)
        .optional()
        .meta({ description: 'with limit: this many runs may happen back to back before the limit applies (default 1)' }),
    })
    .superRefine((m, ctx) => {
      if (m.burst !== undefined && m.limit === undefined)
        ctx.addIssue({ code: 'custom', path: ['burst'], message: 'burst only applies with a limit; add e.g. limit: 0.5' });
    })
    .default(() => ({ ...META_DEFAULTS, sema: [] })),
);

export type MetaSchema = ReturnType<typeof metaSchema>;
export type Meta = z.output<MetaSchema>;
/** A resource's meta when it declares none. */
export const defaultMeta: Meta = META_DEFAULTS;
