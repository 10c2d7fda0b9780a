import { createHash } from 'node:crypto';
import { closeSync, constants as fsc, fstatSync, lstatSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import type { SourceLocation } from '../errors.js';
import { textLocator } from '../frontends/document.js';
import { sourcePath } from '../frontends/raw-builders.js';
import { SHARED_DEFAULT_META } from '../graph/build.js';
import { Graph, type Edge, type Vertex } from '../graph/graph.js';
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
 * rebuilds the Graph from it — one read, one checksum, one JSON.parse of its index, and each resource's parameters
 * parsed when its worker first reads them — instead of parsing the YAML and validating every resource.
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
 */
const FORMAT = 2;
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

/**
 * Stores `graph`, built without errors from `raw` (parsed from key.text), for the next run. Refuses (returns why)
 * what it could not give back exactly: a value JSON does not carry, a resource not read from YAML, exports, collect
 * rules or warnings. Never throws for an I/O failure either: the caller only logs the reason.
 */
export async function writeCachedGraph(key: GraphCacheKey, raw: RawGraph, graph: Graph): Promise<NotCached | undefined> {
  if (graph.exports.length > 0 || graph.collect.length > 0 || graph.warnings.length > 0) return 'the graph exports, collects or has warnings';
  if (graph.source !== key.file || raw.source !== key.file) return 'the graph comes from another file';
  const byId = new Map<string, RawResource>();
  for (const r of raw.resources) byId.set(resourceId(r.kind, r.name), r);
  // Flat lists (four values a vertex, three an edge) rather than a list each: 100,000s fewer arrays to parse.
  const vertices: unknown[] = [];
  // Each vertex's parameters as one line of JSON after the index (JSON.stringify never writes a raw newline).
  const params: string[] = [];
  const index = new Map<ResourceId, number>();
  for (const [id, v] of graph.vertices) {
    const r = byId.get(id);
    const path = r === undefined ? undefined : sourcePath(r);
    if (r === undefined || path === undefined || r.export !== undefined || r.origin !== undefined) return `${id} was not read from the graph file`;
    if (v.kind !== r.kind || v.name !== r.name || v.id !== resourceId(v.kind, v.name)) return `${id} is not named as written`;
    if (!exactJson(path, 0) || path.length === 0) return `${id}: its place in the file cannot be stored`;
    if (!exactJson(v.params, 0)) return `${id}: its parameters hold a value JSON cannot carry exactly`;
    const shared = v.meta === SHARED_DEFAULT_META;
    if (!shared && !exactJson(v.meta, 0)) return `${id}: its meta holds a value JSON cannot carry exactly`;
    index.set(id, index.size);
    // Our own format's resources are at ['resources', i]: stored as i.
    const at = path.length === 2 && path[0] === 'resources' && typeof path[1] === 'number' ? path[1] : path;
    vertices.push(v.kind, v.name, shared ? 0 : v.meta, at);
    params.push(JSON.stringify(v.params));
  }
  // Edges name their ends by place in the vertex list: the ids are not written twice, nor held twice once read.
  const edges: number[] = [];
  for (const e of graph.edges) {
    const from = index.get(e.from);
    const to = index.get(e.to);
    if (from === undefined || to === undefined) return 'an edge ends outside the graph';
    edges.push(from, to, (e.notify ? 1 : 0) | (e.auto ? 2 : 0));
  }
  // ASCII only (JSON's \uXXXX escapes, inside strings, where alone anything else can be): read back as latin1, which
  // is a copy, not a UTF-8 decode, and the bytes hashed are the characters.
  const body = [JSON.stringify({ v: vertices, e: edges }), ...params].join('\n').replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  const header = `${MAGIC}${keyDigest(key)} ${createHash('sha256').update(body, 'latin1').digest('hex')} ${body.length}\n`;
  if (header.length + body.length > MAX_CACHE_BYTES) return `the cache would be larger than ${MAX_CACHE_BYTES} bytes`;
  const dir = join(key.stateDir, 'graph-cache');
  try {
    await ensurePrivateDir(key.stateDir, 'state directory');
    await ensurePrivateDir(dir, 'graph cache directory');
    await writeFileAtomic(cachePath(key.stateDir, key.file), header + body, 0o600);
  } catch (err) {
    return `cannot write it: ${err instanceof Error ? err.message : String(err)}`;
  }
  return undefined;
}

/** Why a cache entry was not used (for a debug line); a Graph when it was. */
export type CacheLookup = { readonly graph: Graph } | { readonly miss: string };

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
    // The index (ids, meta, places, edges) is parsed now; each vertex's parameters only when first read.
    const nl = body.indexOf(0x0a);
    const end = nl < 0 ? body.length : nl;
    const graph = decode(key, JSON.parse(body.toString('latin1', 0, end)) as unknown, body.subarray(end));
    return graph === undefined ? { miss: 'malformed' } : { graph };
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
 * The Graph an entry describes, or undefined when it is not exactly the layout writeCachedGraph writes. `rest` is
 * what follows the index: a newline before each vertex's parameters.
 */
function decode(key: GraphCacheKey, doc: unknown, rest: Buffer): Graph | undefined {
  if (!isRecord(doc) || !Array.isArray(doc['v']) || !Array.isArray(doc['e'])) return undefined;
  const v = doc['v'] as unknown[];
  const e = doc['e'] as unknown[];
  if (v.length % 4 !== 0 || e.length % 3 !== 0) return undefined;
  const params = LazyParams.split(rest, v.length / 4);
  if (params === undefined) return undefined;
  const loc = lazyLocator(key.file, key.text);
  const vertices = new Map<ResourceId, Vertex>();
  const ids: ResourceId[] = [];
  for (let i = 0; i < v.length; i += 4) {
    const kind = v[i];
    const name = v[i + 1];
    const meta = v[i + 2];
    const at = v[i + 3];
    if (typeof kind !== 'string' || typeof name !== 'string') return undefined;
    if (meta !== 0 && !isRecord(meta)) return undefined;
    if (!(typeof at === 'number' ? Number.isSafeInteger(at) && at >= 0 : Array.isArray(at) && at.length > 0 && at.every((p) => typeof p === 'string' || typeof p === 'number'))) return undefined;
    const id = resourceId(kind, name);
    if (vertices.has(id)) return undefined;
    vertices.set(id, new CachedVertex(id, kind, name, params, ids.length, meta === 0 ? SHARED_DEFAULT_META : (meta as Meta), loc, at as number | PropertyKey[]));
    ids.push(id);
  }
  const edges: Edge[] = [];
  for (let i = 0; i < e.length; i += 3) {
    const a = e[i];
    const b = e[i + 1];
    const flags = e[i + 2];
    if (typeof a !== 'number' || typeof b !== 'number' || typeof flags !== 'number') return undefined;
    const from = ids[a];
    const to = ids[b];
    if (from === undefined || to === undefined) return undefined;
    edges.push({ from, to, notify: (flags & 1) !== 0, auto: (flags & 2) !== 0 });
  }
  return new Graph(vertices, edges, key.file);
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

/** A vertex rebuilt from the cache: what build.ts's BuiltVertex is, its location found from its path in the file. */
class CachedVertex implements Vertex {
  private fp: string | undefined;
  private value: unknown = UNREAD;
  constructor(
    readonly id: ResourceId,
    readonly kind: string,
    readonly name: string,
    private readonly store: LazyParams,
    private readonly index: number,
    readonly meta: Meta,
    private readonly find: (path: readonly PropertyKey[]) => SourceLocation,
    /** Its path in the file; a number i for ['resources', i]. */
    private readonly at: number | readonly PropertyKey[],
  ) {}
  get params(): unknown {
    if (this.value === UNREAD) this.value = this.store.take(this.index);
    return this.value;
  }
  get loc(): SourceLocation {
    return this.find(typeof this.at === 'number' ? ['resources', this.at] : this.at);
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
