import { createHash, randomBytes } from 'node:crypto';
import { closeSync, constants as fsc, fstatSync, linkSync, lstatSync, openSync, readdirSync, readSync, renameSync, rmSync } from 'node:fs';
import { lutimes } from 'node:fs/promises';
import { join } from 'node:path';
import type { SourceLocation } from '../errors.js';
import { textLocator } from '../frontends/document.js';
import { sourcePath } from '../frontends/raw-builders.js';
import { SHARED_DEFAULT_META } from '../graph/build.js';
import { EdgeTable, Graph, TableAdjacency, type Vertex } from '../graph/graph.js';
import { resourceId, type ResourceId } from '../graph/ids.js';
import type { Meta } from '../graph/meta.js';
import type { RawGraph, RawResource } from '../graph/raw.js';
import { canonicalJson } from '../util/canonical.js';
import { writeFileAtomic } from '../util/atomic-write.js';
import { ensurePrivateDir } from '../util/private-dir.js';

/*
 * The validated-graph cache: what CFEngine's cf_promises_validated is to cf-agent. A YAML graph is a pure function of
 * its text, its path (errors carry file:line) and the build of Backplane that reads it (the frontends, the kinds'
 * schemas and zod are all in the bundle): buildGraph reads nothing else (no environment, no hostname, no facts, no
 * other file — a YAML graph has no includes). So once a text has built without a single error, the result is kept in
 * the state directory under a digest of exactly those three, and the next run of the same text by the same build
 * rebuilds the Graph from it — one read, one checksum, a table of integers and a list of ids, and each vertex, edge
 * list and resource's parameters made when first read — instead of parsing the YAML and validating every resource.
 *
 * What the agent keeps there it will act on as root, as it would on the graph file itself, so the cache is trusted
 * exactly as far as the state directory: read with O_NOFOLLOW, only a regular file with one link, owned by the
 * agent's user and writable by nobody else, inside the checked private directory; written atomically (temp file,
 * fsync, rename, directory fsync). Its body carries its own SHA-256, so a corrupt or cut-short file is refused whole,
 * never used in part; anything unexpected in it is a miss, and a miss is only a full parse. Writing it never fails a
 * run. Only what survives JSON exactly is stored (checked value by value when writing); anything else is not cached.
 */

/**
 * Bump when the file's layout changes: an older layout is then a miss, never misread.
 * 2: each vertex's parameters on a line of their own after the index, parsed when first read (LazyParams).
 * 3: the index as an integer table and a block of ids instead of JSON; vertices and edge lists made when first read.
 */
const FORMAT = 3;
const MAGIC = `backplane-graph-cache ${FORMAT} `;
/**
 * The largest cache file read or written. A 100,000-file graph is ~25 MB of cache; a graph file may be up to 32 MiB
 * by default (src/frontends/limits.ts) and its cache a few times that. Past this, the run simply parses.
 */
export const MAX_CACHE_BYTES = 256 * 1024 * 1024;

/**
 * Graphs shorter than this are not cached: parsing and validating them takes less than looking them up (a lookup is
 * a few milliseconds of fixed cost, mostly OpenSSL's first hash; a parse ~1 ms per KiB), and a start-up with an
 * empty or tiny graph must not pay for a cache it cannot gain from.
 */
export const CACHE_MIN_BYTES = 4096;

/** The build the launcher compiled (src/cli/launcher.ts sets it from the bundle's `backplane-build` id). */
const BUILD_KEY = Symbol.for('backplane.build');

/**
 * The running CLI's build id, or undefined when it has none (run from source under tsx, or a bundle without an id):
 * then nothing is cached, since nothing would tell this code's schemas from another's.
 */
export function runningBuild(): string | undefined {
  const id = (globalThis as { [BUILD_KEY]?: unknown })[BUILD_KEY];
  return typeof id === 'string' && /^[0-9a-f]{64}$/.test(id) ? id : undefined;
}

/** What a cached graph is a function of. */
export interface GraphCacheKey {
  /** The agent's private state directory (the cache lives in its graph-cache/ directory). */
  readonly stateDir: string;
  /** The graph file's absolute path, as the graph's source and every location name it. */
  readonly file: string;
  /** The graph file's text, exactly as read. */
  readonly text: string;
  /** The build of Backplane (runningBuild()). */
  readonly build: string;
}

/** One file per graph path, so two graphs run by turns each keep theirs. */
export function cachePath(stateDir: string, file: string): string {
  return join(stateDir, 'graph-cache', `${sha256(file).slice(0, 32)}.json`);
}

function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

/** Every input of the build, in one digest. NULs cannot occur in a path or a build id, so the parts cannot run together. */
function keyDigest(key: GraphCacheKey): string {
  return createHash('sha256').update(`${MAGIC}\u0000${key.build}\u0000${key.file}\u0000`).update(key.text).digest('hex');
}

/** Why a graph was not written to the cache; undefined when it was. */
export type NotCached = string;

/** A lone UTF-16 surrogate: such a string does not survive UTF-8, so a vertex named with one is not cached. */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** JSON with everything past ASCII escaped (\uXXXX, inside strings, where alone it can be): read back as latin1. */
function asciiJson(v: unknown): string {
  return JSON.stringify(v).replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** Per vertex in the entry's integer table: its kind (index into `kinds`), its meta, its place in the file. */
const V_INTS = 3;
/** Per edge: from, to (vertex indexes), flags (1 notify, 2 auto). */
const E_INTS = 3;

/**
 * Stores `graph`, built without errors from `raw` (parsed from key.text), for the next run. Refuses (returns why)
 * what it could not give back exactly: a value JSON does not carry, a resource not read from YAML, exports, collect
 * rules or warnings. Never throws for an I/O failure either: the caller only logs the reason.
 *
 * The body (format 3), each part on its own line(s):
 *   - a JSON head: counts, the kinds, the metas that are not the shared default, the places that are not
 *     ['resources', i], and the byte length of the ids;
 *   - base64 of an Int32Array in this machine's byte order (the entry never leaves it): per vertex its kind, its meta
 *     (0: the shared default, k: metas[k - 1]) and its place (i ≥ 0: ['resources', i]; -k: paths[k - 1]), then per
 *     edge from, to and flags;
 *   - the vertex ids, one a line, in UTF-8 (an id with a newline or a lone surrogate is not cached);
 *   - each vertex's parameters, one JSON line each.
 * A hit decodes the integers and splits the ids, one string each and no JSON; vertices, edge lists and parameters
 * are made when first read (LazyVertices, the edge lists of a TableAdjacency, LazyParams).
 */
export async function writeCachedGraph(key: GraphCacheKey, raw: RawGraph, graph: Graph): Promise<NotCached | undefined> {
  if (graph.exports.length > 0 || graph.collect.length > 0 || graph.warnings.length > 0) return 'the graph exports, collects or has warnings';
  if (graph.source !== key.file || raw.source !== key.file) return 'the graph comes from another file';
  const byId = new Map<string, RawResource>();
  for (const r of raw.resources) byId.set(resourceId(r.kind, r.name), r);
  const n = graph.vertices.size;
  const edgeList = graph.edges;
  const ints = new Int32Array(V_INTS * n + E_INTS * edgeList.length);
  const kinds: string[] = [];
  const kindAt = new Map<string, number>();
  const metas: unknown[] = [];
  const paths: unknown[] = [];
  const ids: string[] = [];
  // Each vertex's parameters as one line of JSON after the ids (JSON.stringify never writes a raw newline).
  const params: string[] = [];
  const index = new Map<ResourceId, number>();
  for (const [id, v] of graph.vertices) {
    const r = byId.get(id);
    const path = r === undefined ? undefined : sourcePath(r);
    if (r === undefined || path === undefined || r.export !== undefined || r.origin !== undefined) return `${id} was not read from the graph file`;
    if (v.kind !== r.kind || v.name !== r.name || v.id !== resourceId(v.kind, v.name)) return `${id} is not named as written`;
    if (id.includes('\n') || LONE_SURROGATE.test(id)) return `${id}: its name cannot be stored`;
    if (!exactJson(path, 0) || path.length === 0) return `${id}: its place in the file cannot be stored`;
    if (!exactJson(v.params, 0)) return `${id}: its parameters hold a value JSON cannot carry exactly`;
    const shared = v.meta === SHARED_DEFAULT_META;
    if (!shared && !exactJson(v.meta, 0)) return `${id}: its meta holds a value JSON cannot carry exactly`;
    const i = index.size;
    index.set(id, i);
    let k = kindAt.get(v.kind);
    if (k === undefined) kindAt.set(v.kind, (k = kinds.push(v.kind) - 1));
    ints[V_INTS * i] = k;
    ints[V_INTS * i + 1] = shared ? 0 : metas.push(v.meta);
    // Our own format's resources are at ['resources', i]: stored as i.
    const at = path.length === 2 && path[0] === 'resources' && typeof path[1] === 'number' && path[1] <= 0x7fffffff ? path[1] : -paths.push(path);
    ints[V_INTS * i + 2] = at;
    ids.push(id);
    params.push(asciiJson(v.params));
  }
  // Edges name their ends by place in the vertex list: the ids are not written twice, nor held twice once read.
  let o = V_INTS * n;
  for (const e of edgeList) {
    const from = index.get(e.from);
    const to = index.get(e.to);
    if (from === undefined || to === undefined) return 'an edge ends outside the graph';
    ints[o++] = from;
    ints[o++] = to;
    ints[o++] = (e.notify ? 1 : 0) | (e.auto ? 2 : 0);
  }
  const idText = ids.join('\n');
  const idBytes = Buffer.byteLength(idText, 'utf8');
  const table = Buffer.from(ints.buffer, ints.byteOffset, ints.byteLength).toString('base64');
  const body = `${asciiJson({ n, e: edgeList.length, kinds, metas, paths, ids: idBytes })}\n${table}\n${idText}${params.map((p) => `\n${p}`).join('')}`;
  const bodyBytes = Buffer.byteLength(body, 'utf8');
  const header = `${MAGIC}${keyDigest(key)} ${createHash('sha256').update(body, 'utf8').digest('hex')} ${bodyBytes}\n`;
  if (header.length + bodyBytes > MAX_CACHE_BYTES) return `the cache would be larger than ${MAX_CACHE_BYTES} bytes`;
  const dir = join(key.stateDir, 'graph-cache');
  try {
    await ensurePrivateDir(key.stateDir, 'state directory');
    await ensurePrivateDir(dir, 'graph cache directory');
    await writeFileAtomic(cachePath(key.stateDir, key.file), header + body, 0o600);
  } catch (err) {
    return `cannot write it: ${err instanceof Error ? err.message : String(err)}`;
  }
  // Entries only ever appear here, at a write: bounded here too. Failing to prune costs disk space, not the run.
  try {
    pruneGraphCache(key.stateDir, cachePath(key.stateDir, key.file));
  } catch {
    // The next write tries again.
  }
  return undefined;
}

/**
 * How many entries the cache keeps and for how long one unused is kept. An entry is up to ~25 MB (100,000 files), and
 * before this bound one was kept for every graph path ever run with the state directory, for good. A hit refreshes
 * its entry's mtime (touchEntry), so age is time since the graph was last run (or written).
 */
export const KEEP_ENTRIES = 8;
export const KEEP_UNUSED_MS = 30 * 24 * 3600 * 1000;
/**
 * A temp file (writeFileAtomic's `<entry>.<hex>.tmp`, or pruneGraphCache's own `.<hex>.prune`) is removed only once
 * it is this old: the process writing it does so in one go (well under a second at 100,000 files), so one an hour
 * old was left by a writer that died; a younger one may be another agent's (one-shot runs share a state directory)
 * write in progress, and is left alone.
 */
export const STALE_TEMP_MS = 3600 * 1000;

const ENTRY_NAME = /^[0-9a-f]{32}\.json$/;
const TEMP_NAME = /^[0-9a-f]{32}\.json\.[0-9a-f]{12}\.(?:tmp|prune)$/;

/**
 * Removes entries other than `keep` (the one just written) beyond the KEEP_ENTRIES most recently used or unused for
 * KEEP_UNUSED_MS, and temp files older than STALE_TEMP_MS. An entry is taken away by renaming it to a temp name first
 * and removed only if what was renamed is the very file judged (same inode and mtime): one another process renamed
 * into place meanwhile (a newer version of that graph's entry) is linked back under its name instead — link()
 * never replaces, so a still newer one there stays — and nothing written after the judgement is lost. A process
 * reading an entry as it goes keeps what it opened (its descriptor), or misses and parses.
 */
export function pruneGraphCache(stateDir: string, keep: string, opts: { readonly now?: number; readonly beforeTake?: (path: string) => void } = {}): void {
  const now = opts.now ?? Date.now();
  const dir = join(stateDir, 'graph-cache');
  const entries: { readonly name: string; readonly ino: number; readonly mtimeMs: number }[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (path === keep) continue;
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (st === undefined || !st.isFile()) continue;
    if (TEMP_NAME.test(name)) {
      if (now - st.mtimeMs > STALE_TEMP_MS) rmSync(path, { force: true });
    } else if (ENTRY_NAME.test(name)) entries.push({ name, ino: st.ino, mtimeMs: st.mtimeMs });
  }
  // Newest first; `keep` counts as one of the KEEP_ENTRIES.
  entries.sort((a, b) => b.mtimeMs - a.mtimeMs);
  for (const [i, e] of entries.entries()) {
    if (i + 1 < KEEP_ENTRIES && now - e.mtimeMs <= KEEP_UNUSED_MS) continue;
    const path = join(dir, e.name);
    const grave = `${path}.${randomBytes(6).toString('hex')}.prune`;
    // Tests: another process's write between the judgement and the rename.
    opts.beforeTake?.(path);
    try {
      renameSync(path, grave);
    } catch {
      continue; // gone already (another process pruned it)
    }
    const st = lstatSync(grave, { throwIfNoEntry: false });
    if (st !== undefined && (st.ino !== e.ino || st.mtimeMs !== e.mtimeMs)) {
      try {
        linkSync(grave, path);
      } catch {
        // A newer entry is at that name already: the one renamed away is superseded.
      }
    }
    rmSync(grave, { force: true });
  }
}

/** A hit's entry counts as used now (pruneGraphCache keeps the most recently used); in the background, best effort. */
function touchEntry(path: string): void {
  const now = new Date();
  lutimes(path, now, now).catch(() => undefined);
}
/**
 * Why a cache entry was not used (for a debug line); when it was, the Graph and the kinds its resources are of (from
 * the entry's head: naming them by walking the vertices would build every lazy vertex before the first worker).
 */
export type CacheLookup = { readonly graph: Graph; readonly kinds: readonly string[] } | { readonly miss: string };

/**
 * The graph cached for exactly this key, or why not. Anything short of a whole, intact entry written by this build
 * for this very text and path is a miss.
 */
export async function readCachedGraph(key: GraphCacheKey): Promise<CacheLookup> {
  let data: Buffer;
  try {
    // The state directory is checked once per process (the agent has done it already); its graph-cache/ directory,
    // which only the agent's user can have made there, with one lstat rather than the walk up to / again.
    await ensurePrivateDir(key.stateDir, 'state directory');
    const dir = lstatSync(join(key.stateDir, 'graph-cache'), { throwIfNoEntry: false });
    if (dir === undefined) return { miss: 'none yet' };
    if (!dir.isDirectory() || dir.uid !== (process.geteuid?.() ?? 0) || (dir.mode & 0o022) !== 0) return { miss: 'its directory is not a private directory of this user' };
    // An edited graph misses on the header alone: the rest of a large entry is not read for nothing.
    const digest = keyDigest(key);
    const got = readTrusted(cachePath(key.stateDir, key.file), (start) => {
      const h = parseHeader(start);
      return h === undefined ? 'not a cache file of this format' : h.key !== digest ? 'made for another text, path or build' : undefined;
    });
    if ('why' in got) return { miss: got.why };
    data = got.data;
  } catch (err) {
    return { miss: err instanceof Error ? err.message : String(err) };
  }
  const header = parseHeader(data);
  if (header === undefined) return { miss: 'not a cache file of this format' };
  const body = data.subarray(header.bodyStart);
  if (String(body.length) !== header.bodyLength || createHash('sha256').update(body).digest('hex') !== header.bodyHash) return { miss: 'corrupt or cut short (its checksum does not match)' };
  try {
    const hit = decode(key, body);
    if (hit === undefined) return { miss: 'malformed' };
    touchEntry(cachePath(key.stateDir, key.file));
    return hit;
  } catch (err) {
    return { miss: `malformed: ${err instanceof Error ? err.message : String(err)}` };
  }
}

/** The longest header line: the magic, three hex digests' worth and a length, with room to spare. */
const HEADER_MAX = 256;

/** `backplane-graph-cache FORMAT KEY BODYHASH BODYLENGTH\n` at the start of `data`, or undefined. */
function parseHeader(data: Buffer): { key: string; bodyHash: string; bodyLength: string; bodyStart: number } | undefined {
  const nl = data.subarray(0, HEADER_MAX).indexOf(0x0a);
  if (nl < 0) return undefined;
  const f = data.toString('latin1', 0, nl).split(' ');
  if (f.length !== 5 || `${f[0] ?? ''} ${f[1] ?? ''} ` !== MAGIC) return undefined;
  return { key: f[2] ?? '', bodyHash: f[3] ?? '', bodyLength: f[4] ?? '', bodyStart: nl + 1 };
}

/**
 * Read synchronously: at start-up nothing else waits on the event loop, and each asynchronous call is a round trip
 * through the thread pool (seven of them were ~10 ms, more than parsing a small graph).
 *
 * The file's bytes, or why it may not be trusted (not a private regular file of ours) or is not wanted (`start`
 * says why not from the first bytes).
 */
function readTrusted(path: string, start: (first: Buffer) => string | undefined): { readonly data: Buffer } | { readonly why: string } {
  let fd: number;
  try {
    // O_NOFOLLOW: a symlink in its place is refused (ELOOP), never followed.
    fd = openSync(path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return { why: `${code === 'ENOENT' ? 'none yet' : code === 'ELOOP' ? 'a symlink' : String(code ?? err)}` };
  }
  try {
    const st = fstatSync(fd);
    const me = process.geteuid?.() ?? 0;
    if (!st.isFile()) return { why: 'not a regular file' };
    if (st.uid !== me) return { why: `owned by uid ${st.uid}, not ${me}` };
    if ((st.mode & 0o022) !== 0) return { why: `writable by group or others (mode ${(st.mode & 0o777).toString(8)})` };
    if (st.nlink !== 1) return { why: `${st.nlink} links to it` };
    if (st.size > MAX_CACHE_BYTES) return { why: `larger than ${MAX_CACHE_BYTES} bytes` };
    const head = Buffer.allocUnsafe(Math.min(HEADER_MAX, st.size));
    let len = 0;
    while (len < head.length) {
      const n = readSync(fd, head, len, head.length - len, len);
      if (n === 0) break;
      len += n;
    }
    const why = start(head.subarray(0, len));
    if (why !== undefined) return { why };
    // One byte more than the stat said: a file that grew since is read whole or refused, never cut at the stat's size.
    const buf = Buffer.allocUnsafe(st.size + 1);
    head.copy(buf, 0, 0, len);
    for (;;) {
      const n = readSync(fd, buf, len, buf.length - len, len);
      if (n === 0) break;
      len += n;
      if (len === buf.length) return { why: 'changed while read' };
    }
    return { data: buf.subarray(0, len) };
  } finally {
    closeSync(fd);
  }
}

/**
 * The Graph an entry's body describes, or undefined when it is not exactly the layout writeCachedGraph writes. Only
 * what every vertex needs at once is decoded here: the integer table and the ids (one string each, split from one
 * decode of their block), with the map from id to place. Vertex objects, edge lists and parameters are made as they
 * are first read, which for the engine is as it starts each worker, so the first workers run before most of them exist.
 */
function decode(key: GraphCacheKey, body: Buffer): { graph: Graph; kinds: readonly string[] } | undefined {
  const l1 = body.indexOf(0x0a);
  const l2 = l1 < 0 ? -1 : body.indexOf(0x0a, l1 + 1);
  if (l2 < 0) return undefined;
  const head: unknown = JSON.parse(body.toString('latin1', 0, l1));
  if (!isRecord(head)) return undefined;
  const { n, e, kinds, metas, paths, ids: idBytes } = head;
  if (!isCount(n) || !isCount(e) || !isCount(idBytes)) return undefined;
  if (!Array.isArray(kinds) || !kinds.every((k) => typeof k === 'string')) return undefined;
  if (!Array.isArray(metas) || !metas.every(isRecord)) return undefined;
  if (!Array.isArray(paths) || !paths.every((p) => Array.isArray(p) && p.length > 0 && p.every((x) => typeof x === 'string' || typeof x === 'number'))) return undefined;
  const packed = Buffer.from(body.toString('latin1', l1 + 1, l2), 'base64');
  const size = V_INTS * n + E_INTS * e;
  if (packed.length !== 4 * size) return undefined;
  // Copied into an Int32Array of its own: the decoded bytes need not be 4-byte aligned.
  const ints = new Int32Array(size);
  packed.copy(Buffer.from(ints.buffer), 0);
  const idEnd = l2 + 1 + idBytes;
  if (idEnd > body.length) return undefined;
  const ids = (n === 0 ? [] : body.toString('utf8', l2 + 1, idEnd).split('\n')) as ResourceId[];
  if (ids.length !== n) return undefined;
  const params = LazyParams.split(body.subarray(idEnd), n);
  if (params === undefined) return undefined;
  const index = new Map<ResourceId, number>();
  for (let i = 0; i < n; i++) {
    const id = ids[i] as ResourceId;
    const kind = kinds[ints[V_INTS * i] as number] as unknown;
    const meta = ints[V_INTS * i + 1] as number;
    const at = ints[V_INTS * i + 2] as number;
    if (typeof kind !== 'string' || meta < 0 || meta > metas.length || -at > paths.length) return undefined;
    // The id is kind[name]: its name is what lies between.
    if (!id.startsWith(kind) || id.charCodeAt(kind.length) !== 0x5b || !id.endsWith(']') || id.length < kind.length + 3) return undefined;
    index.set(id, i);
  }
  if (index.size !== n) return undefined;
  // The edges as a built graph has them (TableAdjacency's table), each end checked to be a vertex of this entry.
  const from = new Int32Array(e);
  const to = new Int32Array(e);
  const flagsOf = new Uint8Array(e);
  for (let j = 0, o = V_INTS * n; o < size; j++, o += E_INTS) {
    const a = ints[o] as number;
    const b = ints[o + 1] as number;
    const flags = ints[o + 2] as number;
    if (a < 0 || a >= n || b < 0 || b >= n || flags < 0 || flags > 3) return undefined;
    from[j] = a;
    to[j] = b;
    flagsOf[j] = flags;
  }
  const table: VertexTable = { ids, kinds, metas: metas as Meta[], paths: paths as PropertyKey[][], ints, params, find: lazyLocator(key.file, key.text) };
  const vertices = new LazyVertices(index, table);
  return { graph: new Graph(vertices, new TableAdjacency(vertices, new EdgeTable(n, e, from, to, flagsOf)), key.file), kinds };
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= 0x7fffffff;
}

/** What the vertices of one entry share. */
interface VertexTable {
  readonly ids: readonly ResourceId[];
  readonly kinds: readonly string[];
  readonly metas: readonly Meta[];
  readonly paths: readonly PropertyKey[][];
  readonly ints: Int32Array;
  readonly params: LazyParams;
  readonly find: (path: readonly PropertyKey[]) => SourceLocation;
}

/**
 * The vertices of an entry, as the Map a built graph has: same keys, same order, each vertex the same object every
 * time, but made when first read.
 */
class LazyVertices implements ReadonlyMap<ResourceId, Vertex> {
  private readonly made: (CachedVertex | undefined)[];
  constructor(
    private readonly index: ReadonlyMap<ResourceId, number>,
    private readonly table: VertexTable,
  ) {
    this.made = new Array<CachedVertex | undefined>(index.size);
  }
  get size(): number {
    return this.index.size;
  }
  at(i: number): CachedVertex {
    return (this.made[i] ??= new CachedVertex(this.table.ids[i] as ResourceId, i, this.table));
  }
  indexOf(id: ResourceId): number | undefined {
    return this.index.get(id);
  }
  get(id: ResourceId): Vertex | undefined {
    const i = this.index.get(id);
    return i === undefined ? undefined : this.at(i);
  }
  has(id: ResourceId): boolean {
    return this.index.has(id);
  }
  forEach(cb: (value: Vertex, key: ResourceId, map: ReadonlyMap<ResourceId, Vertex>) => void, thisArg?: unknown): void {
    for (let i = 0; i < this.index.size; i++) cb.call(thisArg, this.at(i), this.table.ids[i] as ResourceId, this);
  }
  keys(): MapIterator<ResourceId> {
    return this.index.keys();
  }
  *values(): MapIterator<Vertex> {
    for (let i = 0; i < this.index.size; i++) yield this.at(i);
    return undefined;
  }
  *entries(): MapIterator<[ResourceId, Vertex]> {
    for (let i = 0; i < this.index.size; i++) yield [this.table.ids[i] as ResourceId, this.at(i)];
    return undefined;
  }
  [Symbol.iterator](): MapIterator<[ResourceId, Vertex]> {
    return this.entries();
  }
}

/** Positions are found as a parse would find them, from the text, and only when first asked (an error, `graph`). */
function lazyLocator(file: string, text: string): (path: readonly PropertyKey[]) => SourceLocation {
  let find: ((path: readonly PropertyKey[]) => SourceLocation) | undefined;
  return (path) => (find ??= textLocator(file, text))(path);
}

/**
 * The parameters of a cache entry's vertices, each parsed the first time it is read. Parsing them all before the
 * graph could start was most of a hit's time (at 100,000 files: a 19 MB JSON.parse and its garbage, about half a
 * second before the first worker): now the engine's first workers start after the index alone is read, and the rest
 * parse as their workers are started. The entry was checked whole (its SHA-256) before any of it is used, so what a
 * later parse reads is exactly what was written. The bytes are let go once every vertex has read its own.
 */
class LazyParams {
  private constructor(
    private buf: Buffer | undefined,
    /** Where vertex i's line starts (after its newline) and ends: starts[i] .. starts[i + 1] - 1. */
    private readonly starts: Uint32Array,
    private left: number,
  ) {}

  /** The lines of `rest` (each starting with a newline), exactly `n` of them, or undefined. */
  static split(rest: Buffer, n: number): LazyParams | undefined {
    const starts = new Uint32Array(n + 1);
    let at = 0;
    for (let i = 0; i < n; i++) {
      if (rest[at] !== 0x0a) return undefined;
      starts[i] = at + 1;
      const next = rest.indexOf(0x0a, at + 1);
      at = next < 0 ? rest.length : next;
    }
    if (at !== rest.length) return undefined;
    starts[n] = rest.length + 1;
    return new LazyParams(rest, starts, n);
  }

  /** Vertex i's parameters; each i is asked for once (CachedVertex keeps what it got). */
  take(i: number): unknown {
    const buf = this.buf;
    if (buf === undefined) throw new Error('graph cache: parameters read twice');
    const value: unknown = JSON.parse(buf.toString('latin1', this.starts[i], (this.starts[i + 1] ?? 0) - 1));
    if (--this.left === 0) this.buf = undefined;
    return value;
  }
}

/** What a CachedVertex holds until its parameters are first read. */
const UNREAD = Symbol('unread');

/**
 * A vertex rebuilt from the cache: what build.ts's BuiltVertex is, its kind, meta and place read from the entry's
 * table, its location found from its place in the file.
 */
class CachedVertex implements Vertex {
  private fp: string | undefined;
  private value: unknown = UNREAD;
  constructor(
    readonly id: ResourceId,
    private readonly i: number,
    private readonly table: VertexTable,
  ) {}
  get kind(): string {
    return this.table.kinds[this.table.ints[V_INTS * this.i] as number] as string;
  }
  get name(): string {
    return this.id.slice(this.kind.length + 1, -1);
  }
  get meta(): Meta {
    const m = this.table.ints[V_INTS * this.i + 1] as number;
    return m === 0 ? SHARED_DEFAULT_META : (this.table.metas[m - 1] as Meta);
  }
  get params(): unknown {
    if (this.value === UNREAD) this.value = this.table.params.take(this.i);
    return this.value;
  }
  get loc(): SourceLocation {
    const at = this.table.ints[V_INTS * this.i + 2] as number;
    return this.table.find(at >= 0 ? ['resources', at] : (this.table.paths[-at - 1] as PropertyKey[]));
  }
  get fingerprint(): string {
    return (this.fp ??= canonicalJson({ k: this.kind, p: this.params, m: this.meta }));
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Deeper than any graph may nest (src/frontends/limits.ts MAX_DEPTH), with room for what a kind's schema adds. */
const MAX_EXACT_DEPTH = 200;

/**
 * True when JSON.parse(JSON.stringify(v)) gives back a value equal to `v` in every way code could look at it: only
 * null, booleans, strings, finite numbers other than -0, arrays without holes and plain objects (Object.prototype, own
 * enumerable string keys only, no value undefined). A Date, a Buffer, a Map, a bigint, NaN, Infinity or undefined
 * anywhere makes it false: such a graph is simply not cached.
 */
export function exactJson(v: unknown, depth: number): boolean {
  switch (typeof v) {
    case 'string':
    case 'boolean':
      return true;
    case 'number':
      return Number.isFinite(v) && !Object.is(v, -0);
    case 'object': {
      if (v === null) return true;
      if (depth > MAX_EXACT_DEPTH) return false;
      if (Array.isArray(v)) {
        if (Object.getPrototypeOf(v) !== Array.prototype || Reflect.ownKeys(v).length !== v.length + 1) return false;
        for (let i = 0; i < v.length; i++) if (!(i in v) || !exactJson(v[i], depth + 1)) return false;
        return true;
      }
      if (Object.getPrototypeOf(v) !== Object.prototype) return false;
      const keys = Object.keys(v);
      if (Reflect.ownKeys(v).length !== keys.length) return false;
      for (const k of keys) {
        const d = Object.getOwnPropertyDescriptor(v, k);
        if (d === undefined || !('value' in d) || !exactJson(d.value, depth + 1)) return false;
      }
      return true;
    }
    default:
      return false;
  }
}
