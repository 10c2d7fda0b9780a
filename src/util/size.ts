/**
 * Sizes with binary units. Apart from the svc kind's schema (src/resources/svc-schema.ts, which re-exports it) so
 * that `backplane run` parsing its own flags does not load that kind's module.
 */

const SIZE = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$/i;
const SIZE_UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** Bytes, or undefined when the text is not a size. Units are binary (1K = 1024), as in `ulimit` and cgroups. */
export function parseSize(v: number | string): number | undefined {
  if (typeof v === 'number') return Number.isFinite(v) && v >= 0 ? Math.round(v) : undefined;
  const m = SIZE.exec(v);
  if (m === null || m[1] === undefined) return undefined;
  return Math.round(Number(m[1]) * (SIZE_UNITS[(m[2] ?? '').toLowerCase()] ?? 1));
}
