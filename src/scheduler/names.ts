import { z } from 'zod';

/**
 * Names and amounts the scheduler's records and policies check, apart from spec-schema.ts (which re-exports them):
 * reading a record must not build the whole service spec schema, which only deploying a spec needs. Every agent
 * start reads records' module (the agent's cluster side), and zod schemas cost to build (README "Performance").
 */

/** A namespace's name: a DNS label (1-63 of a-z, 0-9 and "-", not starting or ending with "-"). */
export const NAMESPACE_NAME = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
export const DEFAULT_NAMESPACE = 'default';

export const namespaceName = () =>
  z
    .string({ error: (i) => (i.input === undefined ? undefined : 'a namespace is a name: 1-63 characters of a-z, 0-9 and "-"') })
    .regex(NAMESPACE_NAME, 'a namespace is 1-63 characters of a-z, 0-9 and "-", starting and ending with a letter or digit (e.g. team-a)');

/** Cores: a number (0.5) or Kubernetes-style millicores ("500m"). */
export function parseCpu(v: number | string): number | undefined {
  if (typeof v === 'number') return Number.isFinite(v) && v > 0 ? v : undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(m?)\s*$/.exec(v);
  if (m === null || m[1] === undefined) return undefined;
  const n = Number(m[1]) / (m[2] === 'm' ? 1000 : 1);
  return n > 0 ? n : undefined;
}
