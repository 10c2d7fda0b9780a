/**
 * Imports a module that is not part of the CLI bundle (a backplane module on BACKPLANE_PATH), by URL.
 *
 * Every such import goes through here, because the CLI bundle runs as a classic script compiled with a V8 code cache
 * (src/cli/launcher.ts) and Node 20 cannot run `import()` from a script that came out of a code cache. scripts/build.mjs
 * swaps this module's body for a call to the launcher's own `import()` and fails the build if any other `import()`
 * is left in the bundle. From source (tsx) this is a plain dynamic import.
 */
export function importModule(url: string): Promise<unknown> {
  return import(url);
}
