/**
 * The CLI's start: dist/backplane.cjs (bin/backplane.js requires it; dist/backplane.mjs imports it). It compiles the bundled CLI
 * (dist/backplane-cli.js, a classic script: what `backplane run` of a local graph needs) with the V8 code cache the
 * build made for it (dist/backplane-cli.cache), so a start deserializes bytecode instead of parsing and compiling 1 MB
 * of JavaScript. The rest of the CLI (dist/backplane-cli-more.js: cluster, scheduler, API, operator commands) is
 * compiled the same way, with its own cache under the same rules, the first time one of its modules is needed; so is
 * dist/backplane-cli-lazy.js, packages the core calls only now and then (the precise YAML parser).
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
  load: (key: string, script: string) => unknown,
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

/** Reads up to `size` bytes of `fd` into the start of `buf`; the count read. */
function readInto(fd: number, buf: Buffer, size: number): number {
  let off = 0;
  while (off < size) {
    const n = readSync(fd, buf, off, size - off, off);
    if (n === 0) break;
    off += n;
  }
  return off;
}

/** The cache beside a script (backplane-cli.js: backplane-cli.cache), opened and checked, or why not. */
function openCache(file: string, scriptStat: Stats): { fd: number; st: Stats } | string {
  let fd: number;
  try {
    fd = openSync(file.replace(/\.js$/, '.cache'), fsc.O_RDONLY | fsc.O_NOFOLLOW);
  } catch (err) {
    return `cannot open: ${(err as NodeJS.ErrnoException).code ?? String(err)}`;
  }
  const st = fstatSync(fd);
  const why = !st.isFile()
    ? 'not a regular file'
    : st.uid !== scriptStat.uid
      ? `owned by uid ${st.uid}, the bundle by uid ${scriptStat.uid}`
      : (st.mode & 0o022) !== 0
        ? `writable by group or others (mode ${(st.mode & 0o777).toString(8)})`
        : undefined;
  if (why === undefined) return { fd, st };
  closeSync(fd);
  return why;
}

/**
 * A script's text, its build id, and its cache's bytecode (or why not). The build writes the id after making the
 * text ASCII, so with an id the bytes are the characters (a one-byte string, no decoding); a script built some other
 * way is decoded as UTF-8.
 *
 * One buffer holds the script's bytes and then the cache's: once the text is a string (a copy) the bytes are dead,
 * and on this machine every first touch of a page costs ~20 us, so the cache is read into pages the script's bytes
 * already touched (~200 page faults, ~4 ms of every start, for the 850 KB core).
 */
function readScript(file: string): { source: string; id: string | undefined; cache: Buffer | string } {
  const fd = openSync(file, 'r');
  let cacheFile: { fd: number; st: Stats } | string = 'not opened';
  try {
    const st = fstatSync(fd);
    if (mode !== 'off') cacheFile = openCache(file, st);
    const buf = Buffer.allocUnsafeSlow(Math.max(st.size, typeof cacheFile === 'string' ? 0 : cacheFile.st.size));
    const n = readInto(fd, buf, st.size);
    const id = BUILD_ID.exec(buf.toString('latin1', Math.max(0, n - 100), n))?.[1];
    const source = buf.toString(id === undefined ? 'utf8' : 'latin1', 0, n);
    const got = { source, id };
    if (mode === 'off') return { ...got, cache: 'off (BACKPLANE_CODE_CACHE=off)' };
    if (id === undefined) return { ...got, cache: 'the bundle has no build id' };
    if (typeof cacheFile === 'string') return { ...got, cache: cacheFile };
    const m = readInto(cacheFile.fd, buf, cacheFile.st.size);
    if (m <= CACHE_HEADER_BYTES || buf.toString('latin1', 0, CACHE_HEADER_BYTES) !== cacheHeader(id)) return { ...got, cache: 'made for another build of the bundle' };
    return { ...got, cache: buf.subarray(CACHE_HEADER_BYTES, m) };
  } finally {
    closeSync(fd);
    if (typeof cacheFile !== 'string') closeSync(cacheFile.fd);
  }
}

/**
 * V8's setFlagsFromString without node:v8: that module loads internal/heap_utils and with it Node's ~20 stream
 * modules at its top, ~4 ms and ~110 page faults of every start (interleaved, 31 rounds: `node -e 0` 67.7 ms, the
 * binding 67.0 ms, node:v8 71.6 ms), and the core needs no stream. node:v8's function is this binding's very function;
 * process.binding('v8') is deprecated (DEP0111) and would print a warning, which is not the CLI's to print, so
 * warnings of deprecation are off for exactly that call. A Node without it (process.binding is going away) gets
 * node:v8, as before.
 */
function v8Flags(): (flags: string) => void {
  const p = process as unknown as { binding?: (name: string) => unknown; noDeprecation?: boolean | undefined };
  const quiet = p.noDeprecation;
  try {
    p.noDeprecation = true;
    const set = (p.binding?.('v8') as { setFlagsFromString?: unknown } | undefined)?.setFlagsFromString;
    if (typeof set === 'function') return (flags) => void (set as (flags: string) => void)(flags);
  } catch {
    // No such binding in this Node: node:v8 below.
  } finally {
    p.noDeprecation = quiet;
  }
  return (createRequire(bundle)('node:v8') as typeof import('node:v8')).setFlagsFromString;
}

/** Compiles a script read by readScript, from its cache when the cache can be used. */
function compile(file: string, source: string, id: string | undefined, cache: Buffer | string): Script {
  const cachedData = typeof cache === 'string' ? undefined : cache;
  // Without a checksum, V8 deserializes whatever bytes it is given (a corrupt cache is a crash, not an error). Checking
  // it changes V8's flag hash, which the build's cache was made with; the flag goes back off at once, so Node's own
  // built-in modules, compiled later with their own caches, see the flags they were built for.
  const checksum = cachedData !== undefined && !/verify-snapshot-checksum/.test(`${process.execArgv.join(' ')} ${process.env['NODE_OPTIONS'] ?? ''}`);
  const setFlags = checksum ? v8Flags() : undefined;
  setFlags?.('--verify-snapshot-checksum');
  let script: Script;
  try {
    script = new Script(source, { filename: file, ...(cachedData === undefined ? {} : { cachedData }) });
  } finally {
    setFlags?.('--no-verify-snapshot-checksum');
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
 * that other scripts import, and the core names the further scripts with their build ids. A module of a script not
 * yet run is asked for with load(key, script): the script is read, checked and compiled like the core, then run, once.
 */
const getters = new Map<string, () => unknown>();
const loaded = new Map<string, unknown>();
/** Further scripts the core named and that have not run (file name beside the core -> the build id it must have). */
const pending = new Map<string, string>();
const bundleRequire = createRequire(bundle);
const url = pathToFileURL(bundle).href;
const resolve = (specifier: string): string => resolveImport(specifier, bundleRequire);
const importModule = (u: string): Promise<unknown> => import(u);

function expose(table: Readonly<Record<string, () => unknown>>, scripts: Readonly<Record<string, string>>): void {
  for (const [key, get] of Object.entries(table)) getters.set(key, get);
  for (const [name, want] of Object.entries(scripts)) pending.set(name, want);
}

function load(key: string, script: string): unknown {
  if (loaded.has(key)) return loaded.get(key);
  const want = pending.get(script);
  if (!getters.has(key) && want !== undefined) {
    // Out of the list while it runs (its top asks the core for a module), back in if it fails: every later load that
    // needs it fails with the same cause (a missing file, another build), not with a vaguer one.
    pending.delete(script);
    try {
      run(join(here, script), want);
    } catch (err) {
      pending.set(script, want);
      throw err;
    }
  }
  const get = getters.get(key);
  if (get === undefined) throw new Error(`backplane: ${script} of this build does not hold the module ${key} (${here} is incomplete: reinstall Backplane)`);
  const m = get();
  loaded.set(key, m);
  return m;
}

/** Runs one of the CLI's scripts; a further one must carry the build id the core names for it. */
function run(file: string, want: string | undefined): void {
  const { source, id, cache } = readScript(file);
  // The core's id covers the ids it names, so the core and the further scripts are one build or nothing runs: a
  // script of another build would be other modules with other exports.
  if (want !== undefined && id !== want) throw new Error(`backplane: ${file} is not of this build (its id ${id ?? 'none'}, the CLI wants ${want}): reinstall Backplane`);
  // The id of the very text compiled here: what the CLI's validated-graph cache is keyed on (src/agent/graph-cache.ts).
  if (want === undefined && id !== undefined) (globalThis as { [k: symbol]: unknown })[Symbol.for('backplane.build')] = id;
  const wrapper = compile(file, source, id, cache).runInThisContext() as Wrapper;
  const module = { exports: {} };
  // Every script sees the core's file, directory and URL as its own: the paths modules find beside the CLI
  // (dist/graph-module-worker.mjs, dist/web/) and the packages require() finds are the same in each.
  wrapper(module.exports, bundleRequire, module, bundle, here, url, resolve, importModule, load, expose);
}

run(bundle, undefined);
