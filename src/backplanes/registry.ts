/**
 * Where backplane modules come from: the shipped ones (redis, postgres; bundled), then each directory of the search
 * path (`BACKPLANE_PATH`, colon-separated, like PATH): `<dir>/<kind>/` or `<dir>/backplane-<kind>/` (an npm package
 * installed there: point the path at a node_modules), holding `index.mjs` / `index.js` or a package.json `main`.
 *
 * A backplane runs as root inside the controller, so a module is loaded only from a path nobody else can change:
 * every directory from `/` down to the file is owned by root or by this process's user and not writable by group or
 * others (a sticky world-writable directory such as /tmp is accepted as an ancestor, as sudo and ssh do). Checked
 * with lstat on every component, so a symlink swapped in anywhere is refused rather than followed.
 */
import { constants as C } from 'node:fs';
import { lstat, readFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { existsSync } from 'node:fs';
import { BackplaneError, errorMessage } from '../errors.js';
import { importModule } from '../util/import-module.js';
import type { BackplaneDefinition, ExpandEnv } from './sdk.js';
import { SHIPPED } from './shipped.js';

export const KIND_PATTERN = /^[a-z][a-z0-9-]{0,62}$/;

/** Where a kind's module is: shipped (bundled), or a file on the search path. */
export type ModuleRef = { readonly kind: string; readonly shipped: true } | { readonly kind: string; readonly shipped: false; readonly file: string; readonly dir: string };

export function searchPath(env: NodeJS.ProcessEnv = process.env): string[] {
  return (env['BACKPLANE_PATH'] ?? '').split(':').filter((d) => d !== '' && isAbsolute(d));
}

export function shippedKinds(): string[] {
  return Object.keys(SHIPPED).sort();
}

/** Finds `kind`'s module (shipped first: a shipped kind cannot be shadowed by a file someone dropped on the path). */
export async function findBackplane(kind: string, path: readonly string[] = searchPath()): Promise<ModuleRef | undefined> {
  if (!KIND_PATTERN.test(kind)) return undefined;
  if (Object.hasOwn(SHIPPED, kind)) return { kind, shipped: true };
  for (const base of path) {
    for (const dir of [join(base, kind), join(base, `backplane-${kind}`)]) {
      const file = await entryOf(dir);
      if (file !== undefined) return { kind, shipped: false, file, dir };
    }
  }
  return undefined;
}

async function entryOf(dir: string): Promise<string | undefined> {
  try {
    const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as { main?: unknown };
    if (typeof pkg.main === 'string') {
      const f = resolve(dir, pkg.main);
      if (f.startsWith(dir + '/') && existsSync(f)) return f;
    }
  } catch {
    // No package.json: look for an index file.
  }
  for (const name of ['index.mjs', 'index.js']) if (existsSync(join(dir, name))) return join(dir, name);
  return undefined;
}

/** Refuses a module file (and its directories) that anyone but root or this user could change. */
export async function checkTrusted(file: string): Promise<void> {
  const uid = process.getuid?.() ?? 0;
  let cur = resolve(file);
  let first = true;
  for (;;) {
    const st = await lstat(cur).catch((err: unknown) => {
      throw new BackplaneError('E_IO', `cannot check ${cur}: ${errorMessage(err)}`);
    });
    if (st.isSymbolicLink()) throw new BackplaneError('E_APPLY', `backplane module path ${cur} is a symbolic link`, { hint: 'install the module under a real directory; links are refused so nobody can swap what the controller loads' });
    if (st.uid !== 0 && st.uid !== uid) throw new BackplaneError('E_APPLY', `backplane module path ${cur} belongs to uid ${st.uid}`, { hint: `chown root ${cur}: the controller runs it as root` });
    const loose = (st.mode & 0o022) !== 0;
    const sticky = (st.mode & C.S_IFMT) === C.S_IFDIR && (st.mode & 0o1000) !== 0;
    if (loose && (first || !sticky)) throw new BackplaneError('E_APPLY', `backplane module path ${cur} is writable by group or others (mode ${(st.mode & 0o7777).toString(8)})`, { hint: `chmod go-w ${cur}: the controller runs it as root` });
    first = false;
    const up = dirname(cur);
    if (up === cur) return;
    cur = up;
  }
}

/** Imports a backplane module and checks that its default export is a backplane of that kind. */
export async function loadBackplane(ref: ModuleRef): Promise<BackplaneDefinition<unknown>> {
  let mod: { default?: unknown };
  if (ref.shipped) {
    const load = SHIPPED[ref.kind];
    if (load === undefined) throw new BackplaneError('E_UNKNOWN_KIND', `no shipped backplane "${ref.kind}"`);
    mod = (await load()) as { default?: unknown };
  } else {
    await checkTrusted(ref.file);
    try {
      mod = (await importModule(pathToFileURL(ref.file).href)) as { default?: unknown };
    } catch (err) {
      throw new BackplaneError('E_SCHEMA', `the ${ref.kind} backplane (${ref.file}) failed to load: ${errorMessage(err)}`, { hint: 'fix the module; nothing else is affected' });
    }
  }
  const def = mod.default as Partial<BackplaneDefinition<unknown>> | undefined;
  const where = ref.shipped ? `the shipped ${ref.kind} backplane` : ref.file;
  if (def === undefined || typeof def !== 'object') throw new BackplaneError('E_SCHEMA', `${where} has no default export`, { hint: 'export default defineBackplane({ kind, params, expand, react })' });
  if (def.kind !== ref.kind) throw new BackplaneError('E_SCHEMA', `${where} says it is kind "${String(def.kind)}", not "${ref.kind}"`, { hint: 'the directory name and the module\'s kind must agree' });
  if (typeof def.expand !== 'function' || typeof def.react !== 'function' || def.params === undefined || typeof def.params.safeParse !== 'function')
    throw new BackplaneError('E_SCHEMA', `${where} is not a backplane: it needs params (a zod schema), expand() and react()`, { hint: 'export default defineBackplane({ kind, params, expand, react })' });
  return def as BackplaneDefinition<unknown>;
}

/** What `expand` gets: how to run the backplane's own scripts (its member) with this Node. */
export function expandEnv(ref: ModuleRef): ExpandEnv {
  return {
    script(entry: string): string[] {
      if (!/^[a-z0-9][a-z0-9-]{0,62}$/.test(entry)) throw new BackplaneError('E_SCHEMA', `script name "${entry}" is not a plain name`);
      if (!ref.shipped) {
        for (const ext of ['.mjs', '.js']) if (existsSync(join(ref.dir, entry + ext))) return [process.execPath, join(ref.dir, entry + ext)];
        throw new BackplaneError('E_UNKNOWN_KIND', `the ${ref.kind} backplane has no script ${entry}.mjs in ${ref.dir}`);
      }
      return shippedScript(ref.kind, entry);
    },
  };
}

/**
 * A shipped backplane's script: dist/backplanes/<kind>/<entry>.mjs beside the CLI bundle, or, from a source checkout
 * (tsx), the TypeScript file run through tsx.
 */
function shippedScript(kind: string, entry: string): string[] {
  const here = import.meta.url;
  if (here.endsWith('.ts')) {
    const src = fileURLToPath(new URL(`./${kind}/${entry}.ts`, here));
    return [process.execPath, '--import', 'tsx', src];
  }
  for (const rel of [`./backplanes/${kind}/${entry}.mjs`, `../backplanes/${kind}/${entry}.mjs`]) {
    const url = new URL(rel, here);
    if (existsSync(url)) return [process.execPath, fileURLToPath(url)];
  }
  throw new BackplaneError('E_IO', `the ${kind} backplane's ${entry}.mjs is missing beside the CLI bundle`, { hint: 'rebuild with `node scripts/build.mjs`' });
}
