/**
 * The backplanes shipped with Backplane, loaded on demand (each is its own chunk of the bundle). Adding one: a folder
 * src/backplanes/<kind>/ with index.ts (its BackplaneDefinition) and member.ts, a line here, and its member entry in
 * scripts/build.mjs.
 */
export const SHIPPED: Readonly<Record<string, () => Promise<unknown>>> = {
  redis: () => import('./redis/index.js'),
  postgres: () => import('./postgres/index.js'),
};
