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

/** Linux's PATH_MAX counts the terminating NUL, so a path has at most 4095 bytes; NAME_MAX is per component. */
export const PATH_MAX_BYTES = 4095;
export const NAME_MAX_BYTES = 255;

/** ASCII without NUL: one UTF-8 byte a character. */
function plainAscii(p: string): boolean {
  for (let i = 0; i < p.length; i++) {
    const c = p.charCodeAt(i);
    if (c === 0 || c > 0x7f) return false;
  }
  return true;
}

/**
 * Why a string cannot name a file on Linux, or undefined when it can. Checked at validation so the problem is
 * reported with its line before anything runs, not as an EINVAL or ENAMETOOLONG halfway through a convergence.
 * A lone UTF-16 surrogate (from a YAML "\uD800" escape or a TypeScript string) has no UTF-8 form: Node would write
 * U+FFFD instead and manage a different file than the one declared. (Invalid UTF-8 bytes in a graph file are refused
 * when the file is read, so every string that gets here is what its author wrote.)
 */
export function pathProblem(p: string): string | undefined {
  // Plain ASCII without NUL, at most NAME_MAX characters: one byte a character, so no length limit can be passed
  // and nothing else below applies. Nearly every path is one; the checks below cost ~1 µs a path (split, byte counts).
  if (p.length <= NAME_MAX_BYTES && plainAscii(p)) return undefined;
  if (p.includes('\0')) return 'must not contain a NUL character (\\0): no file name can hold one';
  if (/[\uD800-\uDFFF]/u.test(p)) return 'contains a lone UTF-16 surrogate, which has no UTF-8 form and cannot be a file name';
  const bytes = Buffer.byteLength(p, 'utf8');
  if (bytes > PATH_MAX_BYTES) return `is ${bytes} bytes long; Linux paths are at most ${PATH_MAX_BYTES} bytes (PATH_MAX)`;
  const long = p.split('/').find((c) => Buffer.byteLength(c, 'utf8') > NAME_MAX_BYTES);
  if (long !== undefined) return `has a component of ${Buffer.byteLength(long, 'utf8')} bytes ("${long.slice(0, 20)}..."); each name in a path is at most ${NAME_MAX_BYTES} bytes (NAME_MAX)`;
  return undefined;
}

/** A string that must be usable as a path (a symlink's target, which may be relative). */
export const pathString = () =>
  z
    .string()
    .min(1)
    .superRefine((p, ctx) => {
      const problem = pathProblem(p);
      if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem });
    });

export const absolutePath = () =>
  pathString()
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

// ---- For quickParams: the same checks as the schema pieces above, without zod --------------------------------------
// Each answers only what it is sure the schema piece would answer the same way, and undefined (or false) otherwise:
// the caller then leaves the whole resource to the schema, which reports the problem.

/** Whether absolutePath() accepts v unchanged. */
export function isAbsolutePath(v: unknown): v is string {
  if (typeof v !== 'string' || v.length === 0 || v.charCodeAt(0) !== 0x2f || pathProblem(v) !== undefined) return false;
  return !(v.includes('..') && v.split('/').includes('..'));
}

/** A plain object from a graph (YAML, JSON): Object's prototype or none, own enumerable string keys only, no `__proto__` key. */
export function isPlainRecord(v: unknown): v is Readonly<Record<string, unknown>> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto: unknown = Object.getPrototypeOf(v);
  if (proto !== Object.prototype && proto !== null) return false;
  const own = Reflect.ownKeys(v);
  // A symbol, a non-enumerable key or `__proto__` (which zod strips): the schema decides.
  return own.length === Object.keys(v).length && !Object.hasOwn(v, '__proto__');
}

/** What z.record(z.string(), z.string()) makes of v (a copy), or undefined. */
export function quickStringRecord(v: unknown): Record<string, string> | undefined {
  if (!isPlainRecord(v)) return undefined;
  const out: Record<string, string> = {};
  for (const k of Object.keys(v)) {
    const x = v[k];
    if (typeof x !== 'string') return undefined;
    out[k] = x;
  }
  return out;
}

/** What a string array with at least `min` elements, each non-empty when `nonEmpty`, makes of v (a copy), or undefined. */
export function quickStringArray(v: unknown, min: number, nonEmpty: boolean): string[] | undefined {
  if (!Array.isArray(v) || v.length < min) return undefined;
  const out: string[] = [];
  for (const x of v as unknown[]) {
    if (typeof x !== 'string' || (nonEmpty && x.length === 0)) return undefined;
    out.push(x);
  }
  return out;
}

/** What withUnit(parse, ...) makes of v, or undefined: a finite non-negative number or a string, then `parse`. */
export function quickUnit(v: unknown, parse: (v: number | string) => number | undefined): number | undefined {
  if (typeof v === 'number') return Number.isFinite(v) && v >= 0 ? parse(v) : undefined;
  return typeof v === 'string' ? parse(v) : undefined;
}

/** What z.union([z.string().min(1), z.number().int().nonnegative()]) makes of v (a user or group), or undefined. */
export function quickOwner(v: unknown): string | number | undefined {
  if (typeof v === 'string') return v.length > 0 ? v : undefined;
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : undefined;
}

/** What fileMode() makes of v, or undefined. */
export function quickFileMode(v: unknown): number | undefined {
  if (typeof v !== 'string' && typeof v !== 'number') return undefined;
  const m = parseFileMode(v);
  return m.ok ? m.mode : undefined;
}
