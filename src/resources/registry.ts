import type { KindRegistry } from '../graph/build.js';
import type { RawGraph } from '../graph/raw.js';
import { fileKind } from './file.js';
import type { AnyResourceKind } from './types.js';

/**
 * The one list of resource kinds, by name, in the order `backplane schema` lists them. Adding a kind means adding its
 * file and one line here; the engine never changes.
 *
 * Each kind but `file` is loaded on first use (an import(), which the build turns into a script of its own: see
 * KINDS_SCRIPT in scripts/build.mjs): the kinds were ~170 KB of the CLI's core script, read, deserialised and run at
 * every start, while a run needs only the kinds its graph names (an empty graph none; the usual graph files). `file`
 * is what nearly every graph uses, so it stays in the core and costs a file run no second script.
 */
const BUILTIN: Readonly<Record<string, () => Promise<AnyResourceKind>>> = {
  file: () => Promise.resolve(fileKind),
  template: async () => (await import('./template.js')).templateKind,
  exec: async () => (await import('./exec.js')).execKind,
  pkg: async () => (await import('./pkg.js')).pkgKind,
  svc: async () => (await import('./svc.js')).svcKind,
  user: async () => (await import('./user.js')).userKind,
  group: async () => (await import('./group.js')).groupKind,
  http: async () => (await import('./http.js')).httpKind,
  tcp: async () => (await import('./tcp.js')).tcpKind,
  noop: async () => (await import('./noop.js')).noopKind,
  print: async () => (await import('./print.js')).printKind,
  timer: async () => (await import('./timer.js')).timerKind,
  msg: async () => (await import('./msg.js')).msgKind,
  hostname: async () => (await import('./hostname.js')).hostnameKind,
  kv: async () => (await import('./kv.js')).kvKind,
};

/** The built-in kinds' names: known without loading any kind ("did you mean", `known kinds:`). */
export const builtinKindNames: readonly string[] = Object.keys(BUILTIN);

/** The built-in kinds loaded so far, shared by every registry (a kind's module is loaded once per process anyway). */
const loaded = new Map<string, AnyResourceKind>([['file', fileKind]]);
/** The loads under way, so that two prepares of the same kind share one. */
const loading = new Map<string, Promise<void>>();

/** A known kind asked for before it was loaded: a caller built a graph without preparing its kinds first (a bug). */
export class KindNotLoadedError extends Error {
  constructor(readonly kind: string) {
    super(`resource kind "${kind}" was used before it was loaded: prepare the registry for the graph's kinds before building it`);
    this.name = 'KindNotLoadedError';
  }
}

function loadKind(name: string): Promise<void> {
  const load = BUILTIN[name];
  if (load === undefined || loaded.has(name)) return Promise.resolve();
  let p = loading.get(name);
  if (p === undefined) {
    p = load().then(
      (k) => {
        loaded.set(name, k);
        loading.delete(name);
      },
      (err: unknown) => {
        loading.delete(name);
        throw err;
      },
    );
    loading.set(name, p);
  }
  return p;
}

/** Every built-in kind, loaded, in the order of builtinKindNames (schema generation, tests). */
export async function loadBuiltinKinds(): Promise<AnyResourceKind[]> {
  await Promise.all(builtinKindNames.map(loadKind));
  return builtinKindNames.map((name) => loaded.get(name) as AnyResourceKind);
}

/** The registries createRegistry() made of the built-in kinds, and nothing else (see isBuiltinRegistry). */
const builtinRegistries = new WeakSet<KindRegistry>();

/**
 * A registry of `kinds`, all loaded already; without `kinds`, the built-in kinds, each loaded by prepare() when a
 * graph first names it. get() stays synchronous (the graph build and the engine call it per resource): a built-in
 * kind not prepared yet throws KindNotLoadedError rather than passing for an unknown kind.
 */
export function createRegistry(kinds?: readonly AnyResourceKind[]): KindRegistry {
  if (kinds !== undefined) {
    const byName = new Map(kinds.map((k) => [k.kind, k]));
    return {
      get: (kind) => byName.get(kind),
      names: () => byName.keys(),
      prepare: () => Promise.resolve(),
    };
  }
  const registry: KindRegistry = {
    get: (kind) => {
      const k = loaded.get(kind);
      if (k === undefined && Object.hasOwn(BUILTIN, kind)) throw new KindNotLoadedError(kind);
      return k;
    },
    names: () => builtinKindNames,
    prepare: async (names) => {
      const pending: Promise<void>[] = [];
      for (const name of names) if (!loaded.has(name) && Object.hasOwn(BUILTIN, name)) pending.push(loadKind(name));
      await Promise.all(pending);
    },
  };
  builtinRegistries.add(registry);
  return registry;
}

/** The registry is exactly the built-in kinds (what the build id vouches for: the validated-graph cache). */
export function isBuiltinRegistry(registry: KindRegistry): boolean {
  return builtinRegistries.has(registry);
}

/** The kinds a raw graph names: its resources' and its collect rules'. What to prepare before building it. */
export function kindsOf(raw: Pick<RawGraph, 'resources' | 'collect'>): Set<string> {
  const kinds = new Set<string>();
  for (const r of raw.resources) kinds.add(r.kind);
  for (const rule of raw.collect ?? []) kinds.add(rule.kind);
  return kinds;
}
