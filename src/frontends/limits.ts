import { isUtf8 } from 'node:buffer';
import { closeSync, constants as fsc, fstatSync, openSync, read, readSync } from 'node:fs';
import { BackplaneError, ValidationErrors, type SourceLocation } from '../errors.js';

/**
 * Limits on what a graph may cost to read. The agent runs as root and reloads its graph file on every edit, so a
 * hostile or broken file (an alias bomb, a 200 MB file, a thousand nested lists) must end in a clear error within
 * a second, never in minutes of CPU, gigabytes of memory, or a V8 out-of-memory abort.
 */

/** Largest graph file read (YAML or a module), in bytes. Override with BACKPLANE_MAX_GRAPH_BYTES. */
export const DEFAULT_MAX_GRAPH_BYTES = 32 * 1024 * 1024;
/** Deepest nesting of lists and maps in a graph (js-yaml's own default too, passed explicitly so it cannot drift). */
export const MAX_DEPTH = 100;
/**
 * How many values YAML aliases (or a TypeScript graph's shared objects) may add beyond what is written. Each alias
 * is expanded wherever it is used: zod copies it, fingerprints serialise it. Nine levels of ten aliases each are a
 * billion values from 200 bytes; a shared `meta:` block on 10,000 resources is well under this.
 */
export const MAX_ALIAS_EXPANSION = 1_000_000;

/**
 * Up to this size an error in a YAML graph names its line and column; above it, its path (`resources[3].mode`).
 * Positions come from the `yaml` parser, which is ~20x slower and ~50x bigger than the data it reads.
 */
export const PRECISE_MAX_BYTES = 4 * 1024 * 1024;

/** `resources[2].vars.x`: where a value is, for input whose lines are unknown (a module's result, a huge file). */
export function pathText(path: readonly PropertyKey[]): string {
  if (path.length === 0) return 'the document';
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : `${i === 0 ? '' : '.'}${String(p)}`)).join('');
}

export function maxGraphBytes(): number {
  const env = process.env['BACKPLANE_MAX_GRAPH_BYTES'];
  if (env === undefined || env === '') return DEFAULT_MAX_GRAPH_BYTES;
  const n = Number(env);
  if (!Number.isSafeInteger(n) || n <= 0) {
    throw new BackplaneError('E_USAGE', `BACKPLANE_MAX_GRAPH_BYTES="${env}" is not a positive number of bytes`, {
      hint: `unset it for the default (${DEFAULT_MAX_GRAPH_BYTES}), or give a size in bytes, e.g. 134217728`,
    });
  }
  return n;
}

function fileError(file: string, message: string, hint: string, cause?: unknown): BackplaneError {
  return new BackplaneError('E_IO', `cannot read graph file ${file}: ${message}`, { hint, cause });
}

/**
 * node:fs's callbacks as promises, for readGraphText: node:fs/promises loads ~10 more of Node's modules (its
 * FileHandle's readLines, watch and opendir: readline, the watchers, fs/dir) at its first use, 2.7 ms and ~70 page
 * faults of the start of every run whose graph needs nothing else of it (an empty one: 64.6 ms for `node -e 0`,
 * 67.3 ms with node:fs/promises required, 31 rounds interleaved).
 */
function settle<T>(call: (done: (err: NodeJS.ErrnoException | null, value: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => call((err, value) => (err === null ? resolve(value) : reject(err))));
}

/**
 * Reads a graph file as text: its size is checked on the open descriptor before a byte is read (so a file that is
 * swapped for a bigger one in between is still caught), and bytes that are not UTF-8 are refused with their
 * position rather than silently turned into U+FFFD, which would make a path or a file's content differ from what
 * the author meant.
 */
export async function readGraphText(file: string): Promise<string> {
  const max = maxGraphBytes();
  let buf: Buffer;
  // Whether the bytes read so far are UTF-8, checked up to `checked` (a character's start) while the next chunk is
  // read: one isUtf8 over the whole 9.8 MB of a 100,000-resource graph after reading it was ~13 ms of the main
  // thread, about all of it the bytes' first pass through the cache; a chunk just read is still there.
  let valid = true;
  let checked = 0;
  try {
    // Opened, checked and (up to SYNC_READ_MAX) read on this thread: through the thread pool, the five round trips
    // of a small graph took ~2 ms of a cold run's start, before anything else could begin. O_NONBLOCK: a FIFO put at
    // the path must not hold the open (it is refused below as not a regular file); a regular file ignores it.
    const fd = openSync(file, fsc.O_RDONLY | fsc.O_NONBLOCK);
    const readAt = (into: Buffer, at: number, length: number, position: number): Promise<number> => settle<number>((done) => read(fd, into, at, length, position, done));
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw fileError(file, 'not a regular file', 'give --file the path of a graph file');
      if (st.size > max) throw tooBig(file, st.size, max);
      if (st.size <= SYNC_READ_MAX) {
        // One byte past the size: a file that grew since the stat is read on (and caught past the limit).
        buf = Buffer.allocUnsafeSlow(Math.min(st.size, max) + 1);
        let len = 0;
        for (let n = readSync(fd, buf, 0, buf.length, 0); n > 0; n = readSync(fd, buf, len, buf.length - len, len)) {
          len += n;
          if (len > max) throw tooBig(file, len, max);
          if (len === buf.length) buf = Buffer.concat([buf, Buffer.allocUnsafeSlow(Math.min(buf.length, max + 1 - buf.length))]);
        }
        buf = buf.subarray(0, len);
        valid = isUtf8(buf);
        checked = len;
        return decoded(file, buf, valid);
      }
      // Read one byte past the limit: a file that grew since the stat is caught too. Not zero-filled: only the bytes
      // read are used (subarray below), and filling 10 MB with zeros was ~30 ms of the main thread's page faults at
      // 100,000 resources; unfilled, the pages are first touched by the read itself, in the thread pool.
      buf = Buffer.allocUnsafeSlow(Math.min(st.size, max) + 1);
      let len = 0;
      let next = readAt(buf, 0, Math.min(READ_CHUNK, buf.length), 0);
      for (;;) {
        const bytesRead = await next;
        if (bytesRead === 0) break;
        len += bytesRead;
        if (len > max) throw tooBig(file, len, max);
        if (len === buf.length) buf = Buffer.concat([buf, Buffer.allocUnsafeSlow(Math.min(buf.length, max + 1 - buf.length))]);
        next = readAt(buf, len, Math.min(READ_CHUNK, buf.length - len), len);
        const end = wholeCharacters(buf, checked, len);
        if (valid && end > checked) valid = isUtf8(buf.subarray(checked, end));
        checked = end;
      }
      buf = buf.subarray(0, len);
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    if (err instanceof BackplaneError || err instanceof ValidationErrors) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw fileError(file, code === 'ENOENT' ? 'no such file' : String(code ?? err), code === 'ENOENT' ? 'check the path given to --file' : 'check the file permissions', err);
  }
  if (valid && checked < buf.length) valid = isUtf8(buf.subarray(checked));
  return decoded(file, buf, valid);
}

/** Graph files up to this size are read synchronously (see readGraphText). */
const SYNC_READ_MAX = 256 * 1024;

function decoded(file: string, buf: Buffer, valid: boolean): string {
  if (!valid) throw notUtf8(file, buf);
  // A UTF-8 byte order mark is not part of the YAML.
  const text = buf.toString('utf8');
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/** Bytes read at a time: the check of one chunk runs while the thread pool reads the next. */
export const READ_CHUNK = 1024 * 1024;

/**
 * Where the bytes from `from` to `to` stop being whole characters: `to`, or the start of a last sequence that the
 * bytes after `to` may complete. Checked in such pieces, a text is UTF-8 exactly when it is as a whole (a sequence
 * cut by `to` is checked with the next piece; anything else is decided inside one piece).
 */
function wholeCharacters(buf: Buffer, from: number, to: number): number {
  // The last byte that is not a continuation (10xxxxxx), among the last four: a sequence is at most four bytes.
  let lead = to - 1;
  while (lead > from && lead > to - 4 && ((buf[lead] ?? 0) & 0xc0) === 0x80) lead--;
  if (lead < from) return to;
  const b = buf[lead] ?? 0;
  const n = b < 0x80 ? 1 : b >= 0xc0 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf7 ? 4 : 1;
  return lead + n > to ? lead : to;
}

function tooBig(file: string, size: number, max: number): ValidationErrors {
  return new ValidationErrors([
    new BackplaneError('E_LIMIT', `graph file is ${mib(size)} (${size} bytes), more than the limit of ${mib(max)}`, {
      where: { file, line: 0, col: 0 },
      hint: 'split it, or raise the limit with BACKPLANE_MAX_GRAPH_BYTES=<bytes> if a graph this big is intended; nothing was applied',
    }),
  ]);
}

function mib(n: number): string {
  return `${(n / 1024 / 1024).toFixed(n < 10 * 1024 * 1024 ? 1 : 0)} MiB`;
}

/** Where the first byte that is not UTF-8 lies, as line:col (col counted in characters of the valid text before it). */
function notUtf8(file: string, buf: Buffer): ValidationErrors {
  const at = firstInvalidUtf8(buf);
  const before = buf.subarray(0, at);
  const lineStart = before.lastIndexOf(0x0a) + 1;
  let line = 1;
  for (let i = before.indexOf(0x0a); i !== -1; i = before.indexOf(0x0a, i + 1)) line++;
  const col = [...before.subarray(lineStart).toString('utf8')].length + 1;
  const hex = buf.subarray(at, at + 4).toString('hex').replace(/(..)/g, '\\x$1');
  return new ValidationErrors([
    new BackplaneError('E_YAML', `the file is not UTF-8: invalid byte sequence ${hex}`, {
      where: { file, line, col },
      hint: 'save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8); a path or content that needs other bytes cannot be written in a graph; nothing was applied',
    }),
  ]);
}

/** Offset of the first byte that does not start (or continue) a valid UTF-8 sequence. Only called on bad input. */
function firstInvalidUtf8(buf: Buffer): number {
  let i = 0;
  while (i < buf.length) {
    const b = buf[i] ?? 0;
    const n = b < 0x80 ? 1 : b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
    if (n === 0 || i + n > buf.length || !isUtf8(buf.subarray(i, i + n))) return i;
    i += n;
  }
  return i;
}

/**
 * Refuses data whose aliases (shared references) expand past MAX_ALIAS_EXPANSION values, or that nests deeper
 * than MAX_DEPTH once expanded (an alias inside an anchor inside an alias... nests deeper than any one place in the
 * text; a TypeScript graph can return an object that contains itself). Sizes are memoised per object, so this costs
 * one pass over what is written, however much it would expand to.
 */
export function checkExpansion(data: unknown, locate: (path: readonly PropertyKey[]) => SourceLocation): void {
  const memo = new Map<object, { size: number; height: number }>();
  // Capped: an alias bomb's real size does not fit a double exactly and does not need to.
  const cap = Number.MAX_SAFE_INTEGER / 2;
  const tooDeep = (path: readonly PropertyKey[]): ValidationErrors =>
    new ValidationErrors([
      new BackplaneError('E_LIMIT', `nested more than ${MAX_DEPTH} levels deep (counting what aliases copy in), or a value that contains itself`, {
        where: locate(path),
        hint: 'flatten the data; nothing was applied',
      }),
    ]);
  // One stack of keys, pushed and popped, rather than a new path array per node: at 100,000 resources the copies
  // were most of this check's time. The path is only read when something is wrong.
  const keys: PropertyKey[] = [];
  const LEAF = { size: 1, height: 0 };
  // What is written: each distinct object once, with its scalar children (a tree of 1,100,000 scalars adds nothing;
  // counting objects alone once refused a 300,000-resource graph without a single alias as an alias bomb).
  let written = 0;
  const visit = (v: unknown): { size: number; height: number } => {
    if (v === null || typeof v !== 'object') return LEAF;
    const known = memo.get(v);
    if (known !== undefined) return known;
    // Also what stops a cycle: a value that contains itself is never memoised before it recurses into itself.
    if (keys.length > MAX_DEPTH) throw tooDeep(keys.slice(0, MAX_DEPTH));
    let size = 1;
    let height = 0;
    // Not children(v): its [key, value] pair per entry was ~5 arrays per resource of garbage (a third of this check).
    const list: readonly unknown[] | undefined = Array.isArray(v) ? v : undefined;
    const names = list === undefined ? Object.keys(v) : undefined;
    const n = list?.length ?? names?.length ?? 0;
    let scalars = 0;
    for (let i = 0; i < n; i++) {
      const k = names === undefined ? i : (names[i] ?? '');
      keys.push(k);
      const r = visit(list === undefined ? (v as Record<string, unknown>)[k] : list[i]);
      keys.pop();
      if (r === LEAF) scalars++;
      size = Math.min(cap, size + r.size);
      height = Math.max(height, r.height + 1);
    }
    written += 1 + scalars;
    const r = { size, height };
    memo.set(v, r);
    return r;
  };
  const root = visit(data);
  /** The path to the first child, at each level, for which `bad` still holds: the smallest value at fault. */
  const descend = (bad: (c: { size: number; height: number }) => boolean): PropertyKey[] => {
    const path: PropertyKey[] = [];
    let cur: unknown = data;
    for (;;) {
      if (cur === null || typeof cur !== 'object') return path;
      const next = children(cur).find(([, c]) => c !== null && typeof c === 'object' && bad(memo.get(c) ?? { size: 0, height: 0 }));
      if (next === undefined) return path;
      path.push(next[0]);
      cur = next[1];
    }
  };
  if (root.height > MAX_DEPTH) {
    // Follow the deepest branch: in YAML that ends at the alias that copies the depth in.
    const path: PropertyKey[] = [];
    let cur: unknown = data;
    while (cur !== null && typeof cur === 'object' && path.length < MAX_DEPTH) {
      let best: [PropertyKey, unknown] | undefined;
      let bestHeight = -1;
      for (const e of children(cur)) {
        const h = e[1] !== null && typeof e[1] === 'object' ? (memo.get(e[1])?.height ?? 0) : -1;
        if (h > bestHeight) [best, bestHeight] = [e, h];
      }
      if (best === undefined) break;
      path.push(best[0]);
      cur = best[1];
    }
    throw tooDeep(path);
  }
  if (root.size - written <= MAX_ALIAS_EXPANSION) return;
  throw new ValidationErrors([
    new BackplaneError('E_LIMIT', `aliases expand this value to ${root.size >= cap ? 'more than 10^15' : root.size.toLocaleString('en-US')} values, more than the limit of ${MAX_ALIAS_EXPANSION.toLocaleString('en-US')} beyond what is written`, {
      where: locate(descend((c) => c.size > MAX_ALIAS_EXPANSION)),
      hint: 'an alias (*name) copies its anchor everywhere it is used, and nesting aliases multiplies; write the data out or share less; nothing was applied',
    }),
  ]);
}

function children(v: object): [PropertyKey, unknown][] {
  return Array.isArray(v) ? v.map((c: unknown, i) => [i, c]) : Object.entries(v);
}
