import { z } from 'zod';
import { parseDuration } from '../util/duration.js';
import { MODE_TEXT_PATTERN, parseFileMode } from './file-mode.js';

/**
 * A field written as a number or as a string with a unit, parsed to one number: `parse` returns undefined for text
 * it cannot read, and `example` tells the user what to write instead.
 */
export const withUnit = (parse: (v: number | string) => number | undefined, what: string, example: string, description: string) =>
  z
    .union([z.number().nonnegative(), z.string()])
    .transform((v, ctx) => {
      const n = parse(v);
      if (n === undefined) {
        ctx.addIssue({ code: 'custom', message: `"${String(v)}" is not a ${what}; write ${example}` });
        return z.NEVER;
      }
      return n;
    })
    .meta({ description });

/** A duration field: seconds as a number, or a string with a unit; parsed to milliseconds. */
export const duration = () =>
  withUnit(parseDuration, 'duration', 'seconds (5) or a value with a unit (250ms, 2s, 1m)', 'seconds (number) or a string with a unit: 250ms, 2s, 1m, 1h');

export const absolutePath = () =>
  z
    .string()
    .min(1)
    .refine((p) => p.startsWith('/'), { message: 'must be an absolute path (start with /)' })
    .refine((p) => !p.split('/').includes('..'), { message: 'must not contain ".." segments' });

/** A file mode: octal text ("0644"), absolute symbolic text ("u=rw,go=r") or a number taken as its bits; see file-mode.ts. */
export const fileMode = () =>
  // The patterns and bounds are for editors (the JSON Schema); the parser below judges and explains what is wrong.
  z.union([z.string().meta({ pattern: MODE_TEXT_PATTERN }), z.number().meta({ type: 'integer', minimum: 0, maximum: 0o7777 })]).transform((v, ctx) => {
    const m = parseFileMode(v);
    if (m.ok) return m.mode;
    ctx.addIssue({ code: 'custom', message: m.message });
    return z.NEVER;
  });

/**
 * The top-level parameter names of a kind's schema (looking through refinements and defaults), or none when its
 * schema is not a plain object.
 */
export function schemaShape(schema: z.ZodType): Record<string, unknown> {
  const def = (schema as { def?: { shape?: Record<string, unknown>; innerType?: z.ZodType } }).def;
  if (def?.shape !== undefined) return def.shape;
  if (def?.innerType !== undefined) return schemaShape(def.innerType);
  return {};
}
