/**
 * The CLI's start: dist/backplane.cjs (bin/backplane.js requires it; dist/backplane.mjs imports it). It compiles the bundled CLI
 * (dist/backplane-cli.js, one classic script) with the V8 code cache the build made for it
 * (dist/backplane-cli.cache), so a start deserializes bytecode instead of parsing and compiling 1.6 MB of JavaScript.
 * That, and nothing else, is why the CLI is not an ES module: Node 20 has no code cache for ES modules.
 *
 * The cache is bytecode that runs as whoever runs the CLI (root, on an agent host), so it is trusted exactly as far as
 * the bundle itself: it is read only from beside the bundle, only if it is a regular file owned by the bundle's owner
 * and writable by nobody else, and only if it names the very build of the bundle it sits beside. It is made by the
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
import { dirname, join } from 'node:path';
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
) => void;

const here = dirname(fileURLToPath(import.meta.url));
const bundle = join(here, 'backplane-cli.js');
const mode = process.env['BACKPLANE_CODE_CACHE'];

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
 * The bundle's text and its build id. The build writes the id after making the text ASCII, so with an id the bytes
 * are the characters (a one-byte string, no decoding); a bundle built some other way is decoded as UTF-8.
 */
function readBundle(): { source: string; id: string | undefined; st: Stats } {
  const fd = openSync(bundle, 'r');
  try {
    const st = fstatSync(fd);
    const bytes = readFd(fd, st);
    const id = BUILD_ID.exec(bytes.toString('latin1', Math.max(0, bytes.length - 100)))?.[1];
    return { source: bytes.toString(id === undefined ? 'utf8' : 'latin1'), id, st };
  } finally {
    closeSync(fd);
  }
}

/** The cache beside the bundle, or why not. */
function readCache(id: string | undefined, bundleStat: Stats): Buffer | string {
  if (mode === 'off') return 'off (BACKPLANE_CODE_CACHE=off)';
  if (id === undefined) return 'the bundle has no build id';
  let fd: number;
  try {
    fd = openSync(join(here, 'backplane-cli.cache'), fsc.O_RDONLY | fsc.O_NOFOLLOW);
  } catch (err) {
    return `cannot open: ${(err as NodeJS.ErrnoException).code ?? String(err)}`;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) return 'not a regular file';
    if (st.uid !== bundleStat.uid) return `owned by uid ${st.uid}, the bundle by uid ${bundleStat.uid}`;
    if ((st.mode & 0o022) !== 0) return `writable by group or others (mode ${(st.mode & 0o777).toString(8)})`;
    const data = readFd(fd, st);
    if (data.length <= CACHE_HEADER_BYTES || data.toString('latin1', 0, CACHE_HEADER_BYTES) !== cacheHeader(id)) return 'made for another build of the bundle';
    return data.subarray(CACHE_HEADER_BYTES);
  } finally {
    closeSync(fd);
  }
}

const { source, id, st } = readBundle();
const cache = readCache(id, st);
const cachedData = typeof cache === 'string' ? undefined : cache;
// Without a checksum, V8 deserializes whatever bytes it is given (a corrupt cache is a crash, not an error). Checking
// it changes V8's flag hash, which the build's cache was made with; the flag goes back off at once, so Node's own
// built-in modules, compiled later with their own caches, see the flags they were built for.
const checksum = cachedData !== undefined && !/verify-snapshot-checksum/.test(`${process.execArgv.join(' ')} ${process.env['NODE_OPTIONS'] ?? ''}`);
if (checksum) setFlagsFromString('--verify-snapshot-checksum');
let script: Script;
try {
  script = new Script(source, { filename: bundle, ...(cachedData === undefined ? {} : { cachedData }) });
} finally {
  if (checksum) setFlagsFromString('--no-verify-snapshot-checksum');
}
if (mode === 'debug') {
  const why = typeof cache === 'string' ? cache : script.cachedDataRejected === true ? 'rejected by V8 (another Node version, other V8 flags, or corrupt)' : undefined;
  process.stderr.write(`backplane: code cache ${why === undefined ? 'used' : `not used: ${why}`}\n`);
}
// The id of the very text compiled here: what the CLI's validated-graph cache is keyed on (src/agent/graph-cache.ts).
if (id !== undefined) (globalThis as { [k: symbol]: unknown })[Symbol.for('backplane.build')] = id;
const wrapper = script.runInThisContext() as Wrapper;
const bundleRequire = createRequire(bundle);
const bundleModule = { exports: {} };
wrapper(
  bundleModule.exports,
  bundleRequire,
  bundleModule,
  bundle,
  here,
  pathToFileURL(bundle).href,
  (specifier) => resolveImport(specifier, bundleRequire),
  (url) => import(url),
);
