/**
 * The CLI's start: dist/backplane.cjs (bin/backplane.js requires it; dist/backplane.mjs imports it). It compiles the bundled CLI
 * (dist/backplane-cli.js, a classic script: what `backplane run` of a local graph needs) with the V8 code cache the
 * build made for it (dist/backplane-cli.cache), so a start deserializes bytecode instead of parsing and compiling 1 MB
 * of JavaScript. The rest of the CLI (dist/backplane-cli-more.js: cluster, scheduler, API, operator commands) is
 * compiled the same way, with its own cache under the same rules, the first time one of its modules is needed.
 * That, and nothing else, is why the CLI is not an ES module: Node 20 has no code cache for ES modules.
 *
 * The cache is bytecode that runs as whoever runs the CLI (root, on an agent host), so it is trusted exactly as far as
 * the bundle itself: it is read only from beside the bundle, only if it is a regular file owned by the bundle's owner
 * and writable by nobody else, and only if it names the very build of the bundle it sits beside. Each script has its
 * own cache under these rules. A further script is read only from the core's directory, by the name the core gives,
 * and runs only if it carries the build id the core names for it (the core's own id covers that one). It is made by the
 * build (scripts/build.mjs, scripts/train-code-cache.mjs) and never written here. V8 rejects a cache from another Node
 * version or with other V8 flags, and one whose checksum does not match (a corrupt file): the script is then compiled
 * from source as usual. A missing or refused cache only costs start-up time.
 *
 * It is built as CommonJS (scripts/build.mjs), as bin/backplane.js is (bin/package.json): Node starts a CommonJS main
 * without its ES module loader, milliseconds of every start. import.meta.url is the built file's URL there.
 *
 * BACKPLANE_CODE_CACHE=off compiles from source (to compare, or to profile the compiler);
 * BACKPLANE_CODE_CACHE=debug prints on stderr whether the cache was used.
 */
import { closeSync, constants as fsc, fstatSync, openSync, readSync, type Stats } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { Script } from 'node:vm';
import { resolveImport } from './esm-resolve.js';

/** What the build puts at the end of the bundle and at the start of the cache: the same id in both, or no cache. */
const BUILD_ID = /\n\/\/# backplane-build=([0-9a-f]{64})\n?$/;
/** The cache file: this header (scripts/train-code-cache.mjs writes the same), padded so the bytecode after it starts 8-byte aligned (V8 copies it otherwise). */
const CACHE_MAGIC = 'backplane-code-cache ';
const CACHE_HEADER_BYTES = 96;
function cacheHeader(buildId: string): string {
  return `${CACHE_MAGIC}${buildId}`.padEnd(CACHE_HEADER_BYTES - 1) + '\n';
}

type Wrapper = (
  exports: object,
  require: NodeJS.Require,
  module: { exports: object },
  filename: string,
  dirname: string,
  url: string,
  resolve: (specifier: string) => string,
  importModule: (url: string) => Promise<unknown>,
  load: (key: string) => unknown,
  expose: (getters: Readonly<Record<string, () => unknown>>, scripts: Readonly<Record<string, string>>) => void,
) => void;

const here = dirname(fileURLToPath(import.meta.url));
const bundle = join(here, 'backplane-cli.js');
const mode = process.env['BACKPLANE_CODE_CACHE'];
/**
 * The build's training run (scripts/train-code-cache.mjs) sets this to be handed each script as compiled here, to
 * make its cache from; nothing else does.
 */
const train = (globalThis as { [k: symbol]: unknown })[Symbol.for('backplane.train')] as ((file: string, id: string, script: Script) => void) | undefined;

function readFd(fd: number, st: Stats): Buffer {
  const buf = Buffer.allocUnsafeSlow(st.size);
  let off = 0;
  while (off < buf.length) {
    const n = readSync(fd, buf, off, buf.length - off, off);
    if (n === 0) break;
    off += n;
  }
  return off === buf.length ? buf : buf.subarray(0, off);
}

/**
 * A script's text and its build id. The build writes the id after making the text ASCII, so with an id the bytes
 * are the characters (a one-byte string, no decoding); a script built some other way is decoded as UTF-8.
 */
function readScript(file: string): { source: string; id: string | undefined; st: Stats } {
  const fd = openSync(file, 'r');
  try {
    const st = fstatSync(fd);
    const bytes = readFd(fd, st);
    const id = BUILD_ID.exec(bytes.toString('latin1', Math.max(0, bytes.length - 100)))?.[1];
    return { source: bytes.toString(id === undefined ? 'utf8' : 'latin1'), id, st };
  } finally {
    closeSync(fd);
  }
}

/** The cache beside a script (backplane-cli.js: backplane-cli.cache), or why not. */
function readCache(file: string, id: string | undefined, scriptStat: Stats): Buffer | string {
  if (mode === 'off') return 'off (BACKPLANE_CODE_CACHE=off)';
  if (id === undefined) return 'the bundle has no build id';
  let fd: number;
  try {
    fd = openSync(file.replace(/\.js$/, '.cache'), fsc.O_RDONLY | fsc.O_NOFOLLOW);
  } catch (err) {
    return `cannot open: ${(err as NodeJS.ErrnoException).code ?? String(err)}`;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) return 'not a regular file';
    if (st.uid !== scriptStat.uid) return `owned by uid ${st.uid}, the bundle by uid ${scriptStat.uid}`;
    if ((st.mode & 0o022) !== 0) return `writable by group or others (mode ${(st.mode & 0o777).toString(8)})`;
    const data = readFd(fd, st);
    if (data.length <= CACHE_HEADER_BYTES || data.toString('latin1', 0, CACHE_HEADER_BYTES) !== cacheHeader(id)) return 'made for another build of the bundle';
    return data.subarray(CACHE_HEADER_BYTES);
  } finally {
    closeSync(fd);
  }
}

/** Compiles a script read by readScript, from its cache when the cache can be used. */
function compile(file: string, source: string, id: string | undefined, st: Stats): Script {
  const cache = readCache(file, id, st);
  const cachedData = typeof cache === 'string' ? undefined : cache;
  // Without a checksum, V8 deserializes whatever bytes it is given (a corrupt cache is a crash, not an error). Checking
  // it changes V8's flag hash, which the build's cache was made with; the flag goes back off at once, so Node's own
  // built-in modules, compiled later with their own caches, see the flags they were built for.
  const checksum = cachedData !== undefined && !/verify-snapshot-checksum/.test(`${process.execArgv.join(' ')} ${process.env['NODE_OPTIONS'] ?? ''}`);
  if (checksum) setFlagsFromString('--verify-snapshot-checksum');
  let script: Script;
  try {
    script = new Script(source, { filename: file, ...(cachedData === undefined ? {} : { cachedData }) });
  } finally {
    if (checksum) setFlagsFromString('--no-verify-snapshot-checksum');
  }
  if (mode === 'debug') {
    const why = typeof cache === 'string' ? cache : script.cachedDataRejected === true ? 'rejected by V8 (another Node version, other V8 flags, or corrupt)' : undefined;
    const of = file === bundle ? '' : `of ${basename(file)} `;
    process.stderr.write(`backplane: code cache ${of}${why === undefined ? 'used' : `not used: ${why}`}\n`);
  }
  if (train !== undefined && id !== undefined) train(file, id, script);
  return script;
}

/**
 * The CLI's modules across its scripts (scripts/build.mjs): each script's entry exposes the getters of its modules
 * that the other script imports, and names the further scripts with their build ids. A module of a script not yet
 * run is asked for with load(): the script is read, checked and compiled like the core, then run, once.
 */
const getters = new Map<string, () => unknown>();
const loaded = new Map<string, unknown>();
/** Further scripts named by a script that ran (file name beside the core -> the build id it must have). */
const pending = new Map<string, string>();
const bundleRequire = createRequire(bundle);
const url = pathToFileURL(bundle).href;
const resolve = (specifier: string): string => resolveImport(specifier, bundleRequire);
const importModule = (u: string): Promise<unknown> => import(u);

function expose(table: Readonly<Record<string, () => unknown>>, scripts: Readonly<Record<string, string>>): void {
  for (const [key, get] of Object.entries(table)) getters.set(key, get);
  for (const [name, want] of Object.entries(scripts)) pending.set(name, want);
}

function load(key: string): unknown {
  if (loaded.has(key)) return loaded.get(key);
  let get = getters.get(key);
  for (const [name, want] of pending) {
    if (get !== undefined) break;
    // Out of the list while it runs (its top asks for core modules), back in if it fails: every later load that
    // needs it fails with the same cause (a missing file, another build), not with a vaguer one.
    pending.delete(name);
    try {
      run(join(here, name), want);
    } catch (err) {
      pending.set(name, want);
      throw err;
    }
    get = getters.get(key);
  }
  if (get === undefined) throw new Error(`backplane: no script of this build holds the module ${key} (${here} is incomplete: reinstall Backplane)`);
  const m = get();
  loaded.set(key, m);
  return m;
}

/** Runs one of the CLI's scripts; a further one must carry the build id the core names for it. */
function run(file: string, want: string | undefined): void {
  const { source, id, st } = readScript(file);
  // The core's id covers the ids it names, so the core and the further scripts are one build or nothing runs: a
  // script of another build would be other modules with other exports.
  if (want !== undefined && id !== want) throw new Error(`backplane: ${file} is not of this build (its id ${id ?? 'none'}, the CLI wants ${want}): reinstall Backplane`);
  // The id of the very text compiled here: what the CLI's validated-graph cache is keyed on (src/agent/graph-cache.ts).
  if (want === undefined && id !== undefined) (globalThis as { [k: symbol]: unknown })[Symbol.for('backplane.build')] = id;
  const wrapper = compile(file, source, id, st).runInThisContext() as Wrapper;
  const module = { exports: {} };
  // Every script sees the core's file, directory and URL as its own: the paths modules find beside the CLI
  // (dist/graph-module-worker.mjs, dist/web/) and the packages require() finds are the same in each.
  wrapper(module.exports, bundleRequire, module, bundle, here, url, resolve, importModule, load, expose);
}

run(bundle, undefined);
