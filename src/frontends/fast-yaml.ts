import { CORE_SCHEMA } from 'js-yaml';
import { MAX_DEPTH } from './limits.js';

/**
 * A reader for the YAML that people and generators actually write for a graph, 2-3x faster than js-yaml on it, with
 * half the memory kept (a cold parse of a 100,000-resource, 9.8 MB graph: ~200 ms and 13 MB against ~450 ms and
 * 28 MB, 1.6 against 3.8 billion instructions, measured 2026-12-03; and what it returns has no aliases, so the
 * ~48 ms of checkExpansion are not needed). It answers with exactly what js-yaml's `load(text, { schema:
 * CORE_SCHEMA })` returns (same values, types, key order) or with undefined, "not mine", and then js-yaml reads the
 * text as before. It never reports an error: anything it does not fully understand, including every error, is
 * js-yaml's, which keeps its messages and positions.
 *
 * The subset, one construct per line (test/frontends/fast-yaml.test.ts compares it with js-yaml on every YAML file
 * in the repository and on thousands of random documents):
 *   - block mappings and sequences indented with spaces, `- key: value` and `- - x` compact items, a leading `---`;
 *   - keys of [A-Za-z0-9_][A-Za-z0-9_./-]* followed by `: ` or the line's end;
 *   - plain scalars on one line (typed by js-yaml's own implicit types of CORE_SCHEMA), single- and double-quoted
 *     scalars on one line, literal block scalars `|` `|-` `|+`, and flow collections on one line;
 *   - full-line comments, blank lines, a ` # comment` after a value.
 * Declined: anchors, aliases, tags, directives, `?` keys, quoted keys, folded `>`, multi-line plain, quoted or flow
 * scalars, tabs outside block scalars' text, and anything whose reading by js-yaml needs more than a glance.
 */

/** How often each answer was given: a test asserts the 100,000-resource graph takes the fast path. */
export const fastYamlStats = { answered: 0, declined: 0, lastDecline: '', listsAnswered: 0 };

/**
 * Where readFastYamlList hands each item of the document's top-level list `key`, as it is read: the values of the
 * keys in `fields` go into `fields` (all undefined before each item: `item` sets them back), every other key's into a fresh `params`
 * object, in the text's order (so `params` has the keys, in the order, that copying the item's other keys out of
 * the mapping js-yaml makes would give it). `item` answers false for an item it will not take: the whole text is
 * then declined.
 */
export interface ListSink {
  readonly key: string;
  readonly fields: Record<string, unknown>;
  item(index: number, params: Record<string, unknown>): boolean;
}

/** The document's value, or undefined: js-yaml's to read. */
export function readFastYaml(text: string): { value: unknown } | undefined {
  try {
    const value = new Reader(normalise(text)).document();
    fastYamlStats.answered++;
    return { value };
  } catch (err) {
    if (!(err instanceof NotMine)) throw err;
    fastYamlStats.declined++;
    fastYamlStats.lastDecline = err.message;
    return undefined;
  }
}

/**
 * A document that is a mapping with the key `sink.key`, whose value is a block list of block mappings (a graph:
 * `resources:` then `- kind: file` items): each item goes to the sink as soon as it is read, and no object is made
 * for it, nor a list of them. At 100,000 resources those were 100,000 objects and a list, all alive until the graph
 * was read, so copied by every young-generation collection in between. `rest`: the mapping's other keys (`collect`),
 * read as readFastYaml reads them. Undefined (after some items may have gone to the sink: the caller drops what it
 * made) for any other document, or one the fast reader declines.
 */
export function readFastYamlList(text: string, sink: ListSink): { items: number; rest: Record<string, unknown> } | undefined {
  try {
    const reader = new Reader(normalise(text), sink);
    const rest = reader.document();
    if (reader.items < 0 || typeof rest !== 'object' || rest === null || Array.isArray(rest)) throw new NotMine('not a mapping with the list');
    fastYamlStats.listsAnswered++;
    return { items: reader.items, rest: rest as Record<string, unknown> };
  } catch (err) {
    if (!(err instanceof NotMine)) throw err;
    fastYamlStats.lastDecline = err.message;
    return undefined;
  }
}

/** Why the text goes to js-yaml. Only ever thrown and caught inside this module. */
class NotMine extends Error {}

/** recentPlain's "not typed yet". */
const NOT_YET = Symbol('not yet');

interface ImplicitType {
  readonly tag: string;
  resolve(data: string): boolean;
  construct(data: string): unknown;
}

/**
 * js-yaml's own implicit types (null, bool, int, float), called in its order as its readPlainScalar does: `0644`,
 * `0o17`, `.5`, `-0`, `~`, `Null` and `1_000` come out exactly as js-yaml reads them because js-yaml's code reads them.
 * The shortcut in `plain` (no type starts with another character) holds for these four tags only, so any other
 * schema (a js-yaml upgrade adding a type) turns the reader off rather than reading a scalar differently.
 */
function coreTypes(): readonly ImplicitType[] {
  const list = (CORE_SCHEMA as unknown as { compiledImplicit?: unknown }).compiledImplicit;
  const known = ['null', 'bool', 'int', 'float'].map((t) => `tag:yaml.org,2002:${t}`);
  if (!Array.isArray(list) || list.length !== known.length) return [];
  const ok = list.every((t: unknown, i) => {
    const c = t as Partial<ImplicitType> | null;
    return c !== null && c.tag === known[i] && typeof c.resolve === 'function' && typeof c.construct === 'function';
  });
  return ok ? (list as ImplicitType[]) : [];
}
/**
 * Asked for at the first scalar that may be typed: js-yaml is a script of its own (scripts/build.mjs), read only
 * when a graph needs it, and a graph of paths, names and quoted strings (an empty one, the bench's) never does.
 */
let types: readonly ImplicitType[] | undefined;

const TYPED_START = new Set([...'~nNtTfF+-.'].map((ch) => ch.charCodeAt(0)));
/**
 * The only plain scalars starting with a letter that CORE_SCHEMA types: its null's and bool's words (js-yaml 4's
 * null and bool types match exactly these; its int and float start with a digit, a sign or a dot). `file`,
 * `false-ish` or `Never` are strings without asking js-yaml; `false` is js-yaml's to read, as before.
 */
const TYPED_WORDS = new Set(['null', 'Null', 'NULL', 'true', 'True', 'TRUE', 'false', 'False', 'FALSE']);
/** What may follow `.` or `+.`/`-.` in a typed scalar besides a digit or `_`: .inf, .Inf, .INF, .nan, .NaN, .NAN. */
const NUMBER_WORD_START = new Set([...'iInN'].map((ch) => ch.charCodeAt(0)));
/** 0, or 1 to 15 digits without a leading zero, sign or underscore: what plain() reads without js-yaml. */
const PLAIN_DECIMAL = /^(?:0|[1-9][0-9]{0,14})$/;

function plain(text: string): unknown {
  // Only ~ n N t T f F + - . and digits can start a null, bool, int or float: everything else is a string.
  const c = text.charCodeAt(0);
  if (!(c >= 0x30 && c <= 0x39) && !TYPED_START.has(c)) return text;
  if (((c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)) && !TYPED_WORDS.has(text)) return text;
  // A sign or a dot starts a number only before a digit or a dot (then a digit, `_`, or inf/nan's first letter):
  // `-c`, `-g` and `--verbose` in a command's argv are strings without loading js-yaml for them.
  if (c === 0x2b || c === 0x2d || c === 0x2e) {
    let i = c === 0x2e ? 0 : 1;
    let d = text.charCodeAt(i);
    if (!(d >= 0x30 && d <= 0x39) && d !== 0x2e) return text;
    if (d === 0x2e) {
      d = text.charCodeAt(++i);
      if (!(d >= 0x30 && d <= 0x39) && d !== 0x5f && !NUMBER_WORD_START.has(d)) return text;
    }
  }
  // A plain decimal (a port, a count): js-yaml's int, whose construct is parseInt(text, 10), exact up to 15 digits.
  // Read here, a graph whose only typed scalars are such numbers never loads js-yaml (~3-5 ms of a cold run).
  if (PLAIN_DECIMAL.test(text)) return Number(text);
  types ??= coreTypes();
  if (types.length === 0) throw new NotMine('js-yaml does not expose the core schema types this reader knows');
  for (const t of types) if (t.resolve(text)) return t.construct(text);
  return text;
}

/**
 * Characters js-yaml refuses (or a parser could read as a line break: NEL, LS, PS, a BOM inside the text), and
 * surrogates, checked once over the whole text: js-yaml checks only scalars, so a control character in a comment is
 * declined here and accepted there, which costs only speed. The null byte is among them (js-yaml refuses it).
 */
// eslint-disable-next-line no-control-regex
const ODD_CHARACTERS = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]/;

function normalise(text: string): string {
  // js-yaml drops a leading byte order mark.
  let t = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  if (ODD_CHARACTERS.test(t)) throw new NotMine('a control, surrogate or line-separator character');
  // js-yaml reads \r\n as one line break everywhere and keeps neither character in a value, so the same text with
  // \n alone reads the same; a lone \r (also a line break to js-yaml) is declined.
  if (t.includes('\r')) {
    if (/\r(?!\n)/.test(t)) throw new NotMine('a carriage return without a line feed');
    t = t.replaceAll('\r\n', '\n');
  }
  return t;
}

/**
 * Deeper than this is js-yaml's (and checkExpansion's) to refuse: both count to MAX_DEPTH in slightly different
 * ways, and half of it is far from both and from any real graph (ours nest 4 to 6 levels).
 */
const DEPTH = MAX_DEPTH / 2;

const SPACE = 0x20;
const HASH = 0x23;
const COLON = 0x3a;
const DASH = 0x2d;

/** Key characters, by code: 1 may start a key ([A-Za-z0-9_]), 2 only continue one (. / -). A table: ~2x faster here. */
const KEY_CHAR = new Uint8Array(128);
for (let c = 0; c < 128; c++) {
  const start = (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x5f;
  KEY_CHAR[c] = start ? 1 : c === 0x2e || c === 0x2f || c === DASH ? 2 : 0;
}
function isFlowIndicator(c: number): boolean {
  return c === 0x2c || c === 0x5b || c === 0x5d || c === 0x7b || c === 0x7d;
}
/**
 * What cannot start a plain scalar here: YAML's indicators (`,[]{}#&*!|>'"%@` and backquote), and `?` `:` at all
 * (js-yaml reads some of them as plain, some as keys: not worth telling apart). `-` is decided by the caller.
 */
const NOT_PLAIN_START = new Set([...' ,[]{}#&*!|>\'"%@`?:'].map((ch) => ch.charCodeAt(0)));
function isPlainStart(c: number): boolean {
  return !NOT_PLAIN_START.has(c);
}

class Reader {
  private readonly s: string;
  private readonly len: number;
  /** The current line: where it starts, its indentation (spaces), where it ends (its \n, or the text's end). */
  private ls = 0;
  private ind = 0;
  private le = 0;
  private atEnd = false;
  /** The next tab at or after some line start (-1: none): one search for all lines, not one per line. */
  private nextTab: number;
  /** Where the last scalar read by sq/dq/flowPlain/flow ended. */
  private p = 0;
  /** The last short text read with each length and first character, its value as a plain scalar, as a key: see `slot`. */
  private readonly recent: (string | undefined)[] = new Array<string | undefined>(13 * 128).fill(undefined);
  private readonly recentPlain: unknown[] = new Array<unknown>(13 * 128).fill(NOT_YET);
  private readonly recentKey: (string | undefined)[] = new Array<string | undefined>(13 * 128).fill(undefined);
  /** Per depth, the keys of the mapping being read there: see `mapping`. */
  private readonly seen: string[][] = [];

  /** readFastYamlList's: how many items went to the sink (-1: the list was never read). */
  items = -1;

  constructor(
    s: string,
    private readonly sink?: ListSink,
  ) {
    this.s = s;
    this.len = s.length;
    this.nextTab = s.indexOf('\t');
  }

  document(): unknown {
    this.advance(0, true);
    // A document start marker, on its own line (js-yaml also reads content after it on the same line: declined).
    if (!this.atEnd && this.ind === 0 && this.s.startsWith('---', this.ls)) {
      if (!this.restIsComment(this.ls + 3)) throw new NotMine('content after ---');
      this.advance(this.le + 1);
    }
    // js-yaml gives an empty document undefined and a top-level scalar its value: rare, and not a graph.
    if (this.atEnd) throw new NotMine('no content');
    if (this.ind !== 0) throw new NotMine('indented top level');
    const value = this.node(0, 1);
    if (!this.atEnd) throw new NotMine(`unexpected line at offset ${this.ls}`);
    return value;
  }

  /**
   * Moves to the next line with content at or after `from` (a line start), skipping blank and comment lines.
   * Declines a tab in a content line (js-yaml refuses tabs in indentation and reads them as separators elsewhere)
   * and `---` or `...` at a line's start (a second document, or the end of this one).
   */
  private advance(from: number, first = false): void {
    const s = this.s;
    for (;;) {
      if (from >= this.len) {
        this.atEnd = true;
        this.ls = this.le = this.len;
        this.ind = -1;
        return;
      }
      let le = s.indexOf('\n', from);
      if (le === -1) le = this.len;
      let i = from;
      while (s.charCodeAt(i) === SPACE) i++;
      if (i === le) {
        from = le + 1;
        continue;
      }
      if (s.charCodeAt(i) === HASH) {
        from = le + 1;
        continue;
      }
      if (this.nextTab !== -1 && this.nextTab < from) this.nextTab = s.indexOf('\t', from);
      if (this.nextTab !== -1 && this.nextTab < le) throw new NotMine('a tab');
      const c = s.charCodeAt(from);
      if ((c === DASH || c === 0x2e) && s.charCodeAt(from + 1) === c && s.charCodeAt(from + 2) === c && (from + 3 === le || s.charCodeAt(from + 3) === SPACE)) {
        if (!(first && c === DASH)) throw new NotMine('a document marker');
      }
      this.ls = from;
      this.le = le;
      this.ind = i - from;
      return;
    }
  }

  /** A block sequence or mapping starting at column `col` of the current line. */
  private node(col: number, depth: number): unknown {
    const pos = this.ls + col;
    if (this.isDash(pos)) return this.sequence(col, depth);
    if (this.keyEnd(pos) !== -1) return this.mapping(col, depth);
    throw new NotMine('neither a list item nor a key');
  }

  private isDash(pos: number): boolean {
    return this.s.charCodeAt(pos) === DASH && (pos + 1 === this.le || this.s.charCodeAt(pos + 1) === SPACE);
  }

  /** Where the `:` of a simple key at `pos` is, or -1. The `:` must be followed by a space or the line's end. */
  private keyEnd(pos: number): number {
    const s = this.s;
    if (KEY_CHAR[s.charCodeAt(pos)] !== 1) return -1;
    let i = pos + 1;
    while (i < this.le && (KEY_CHAR[s.charCodeAt(i)] ?? 0) !== 0) i++;
    if (s.charCodeAt(i) !== COLON) return -1;
    return i + 1 === this.le || s.charCodeAt(i + 1) === SPACE ? i : -1;
  }

  /**
   * The text from `from` to `to`, the same string as last time for a short one seen before: `kind`, `file`, `mode`,
   * `"0644"` on every resource are then one string each rather than one per line. At 100,000 resources the copies
   * (all kept, so all copied by every scavenge) were a third of the reader's time. Returns the text's slot in
   * `recent` (and `recentPlain`, `recentKey`), or -1 for a longer text.
   */
  private slot(from: number, to: number): number {
    const n = to - from;
    // V8 copies strings shorter than 13 characters when slicing; longer ones are views of the text anyway.
    if (n > 12) return -1;
    const s = this.s;
    const slot = n * 128 + (s.charCodeAt(from) & 127);
    const last = this.recent[slot];
    if (last !== undefined) {
      // By hand, not startsWith: a builtin call per key was a tenth of the reader's time.
      let k = 1;
      while (k < n && last.charCodeAt(k) === s.charCodeAt(from + k)) k++;
      if (k === n && last.charCodeAt(0) === s.charCodeAt(from)) return slot;
    }
    this.recent[slot] = s.slice(from, to);
    this.recentPlain[slot] = NOT_YET;
    this.recentKey[slot] = undefined;
    return slot;
  }

  private span(from: number, to: number): string {
    const slot = this.slot(from, to);
    return slot === -1 ? this.s.slice(from, to) : (this.recent[slot] as string);
  }

  /** A plain scalar's value, typed once per short text (`kind: file`). */
  private plainSpan(from: number, to: number): unknown {
    const slot = this.slot(from, to);
    if (slot === -1) return plain(this.s.slice(from, to));
    let v = this.recentPlain[slot];
    if (v === NOT_YET) v = this.recentPlain[slot] = plain(this.recent[slot] as string);
    return v;
  }

  /** The key js-yaml makes of a plain key's text (`true:` is "true", `0x1F:` is "31"). */
  private key(from: number, to: number): string {
    const slot = this.slot(from, to);
    if (slot === -1) return this.typedKey(this.s.slice(from, to));
    return (this.recentKey[slot] ??= this.typedKey(this.recent[slot] as string));
  }

  private typedKey(text: string): string {
    // js-yaml stores `__proto__` with defineProperty; not worth copying.
    if (text === '__proto__') throw new NotMine('__proto__');
    return String(plain(text));
  }

  /**
   * `out` is the mapping's object; with `fields` (an item of readFastYamlList's list), the keys `fields` has go
   * there instead.
   */
  private mapping(col: number, depth: number, out: Record<string, unknown> = {}, fields?: Record<string, unknown>): Record<string, unknown> {
    if (depth > DEPTH) throw new NotMine('deep');
    // The keys so far, to find a duplicate by comparing a few strings rather than looking the object up.
    const seen = (this.seen[depth] ??= []);
    let keys = 0;
    for (;;) {
      const pos = this.ls + col;
      const colon = this.keyEnd(pos);
      if (colon === -1) throw new NotMine('not a key');
      const key = this.key(pos, colon);
      // js-yaml throws on a duplicate key (after typing it: `1:` and `0x1:` are the same key "1").
      if (keys < 16) {
        for (let k = 0; k < keys; k++) if (seen[k] === key) throw new NotMine('duplicate key');
        seen[keys] = key;
      } else if (fields !== undefined && Object.hasOwn(fields, key) ? fields[key] !== undefined : Object.hasOwn(out, key)) throw new NotMine('duplicate key');
      keys++;
      if (this.sink !== undefined && depth === 1 && key === this.sink.key) {
        // readFastYamlList's list, read item by item (a second one is a duplicate key, found above).
        this.items = this.itemList(colon + 1, col, depth);
      } else if (fields !== undefined && Object.hasOwn(fields, key)) fields[key] = this.value(colon + 1, col, depth, false);
      else out[key] = this.value(colon + 1, col, depth, false);
      if (this.atEnd || this.ind < col) return out;
      if (this.ind > col) throw new NotMine('bad indentation after a mapping entry');
    }
  }

  /**
   * readFastYamlList's list: `key:` then a block list on the next lines (as `value` reads it, at the key's
   * indentation or deeper) whose items are all compact mappings (`- kind: file`), each handed to the sink once read.
   * Returns how many there were.
   */
  private itemList(p: number, n: number, depth: number): number {
    const sink = this.sink as ListSink;
    if (!this.restIsComment(p)) throw new NotMine('the list is not a block list');
    this.advance(this.le + 1);
    if (this.atEnd || this.ind < n || !this.isDash(this.ls + this.ind)) throw new NotMine('the list is not a block list');
    const col = this.ind;
    // As `sequence` at depth + 1, each item's mapping as `value` reads a compact one.
    if (depth + 1 > DEPTH) throw new NotMine('deep');
    const fields = sink.fields;
    let count = 0;
    let pos = this.ls + col;
    for (;;) {
      const q = this.skipSpaces(pos + 1);
      if (q >= this.le || this.keyEnd(q) === -1) throw new NotMine('an item that is not a compact mapping');
      const params: Record<string, unknown> = {};
      this.mapping(q - this.ls, depth + 2, params, fields);
      if (!sink.item(count, params)) throw new NotMine('an item the general path reports on');
      count++;
      if (this.atEnd || this.ind < col) return count;
      if (this.ind > col) throw new NotMine('bad indentation after a list item');
      pos = this.ls + col;
      if (!this.isDash(pos)) return count;
    }
  }

  private sequence(col: number, depth: number): unknown[] {
    if (depth > DEPTH) throw new NotMine('deep');
    const out: unknown[] = [];
    let pos = this.ls + col;
    for (;;) {
      out.push(this.value(pos + 1, col, depth, true));
      if (this.atEnd || this.ind < col) return out;
      if (this.ind > col) throw new NotMine('bad indentation after a list item');
      pos = this.ls + col;
      // Not an item: the next key of a mapping whose value this list is, written at the key's own indentation.
      if (!this.isDash(pos)) return out;
    }
  }

  /**
   * The value after a key's `:` or an item's `-` at `p`, in a collection indented `n`; reads on to the next
   * content line. An item (`inItem`) may also start a compact mapping or list on its own line.
   */
  private value(p: number, n: number, depth: number, inItem: boolean): unknown {
    const s = this.s;
    let q = p;
    while (s.charCodeAt(q) === SPACE) q++;
    if (q === this.le || s.charCodeAt(q) === HASH) {
      // Nothing on this line: the value is the block below, or null.
      this.advance(this.le + 1);
      if (this.atEnd) return null;
      if (this.ind > n) return this.node(this.ind, depth + 1);
      // A mapping's list may sit at the mapping's own indentation (`key:` then `- a`).
      if (!inItem && this.ind === n && this.isDash(this.ls + n)) return this.sequence(n, depth + 1);
      // js-yaml reads an item of a less indented list after an empty item as one more item of this list.
      if (inItem && this.ind < n && this.isDash(this.ls + this.ind)) throw new NotMine('a less indented item after an empty one');
      return null;
    }
    const c = s.charCodeAt(q);
    let v: unknown;
    if (c === 0x7c) return this.literal(q, n);
    if (c === 0x22) v = this.dq(q);
    else if (c === 0x27) v = this.sq(q);
    else if (c === 0x5b || c === 0x7b) v = this.flow(q, depth + 1);
    else if (c === DASH && this.isDash(q)) {
      if (!inItem) throw new NotMine('a list item after a key on the same line');
      return this.sequence(q - this.ls, depth + 1);
    } else if (inItem && this.keyEnd(q) !== -1) return this.mapping(q - this.ls, depth + 1);
    else return this.after(this.blockPlain(q));
    if (!this.restIsComment(this.p)) throw new NotMine('text after a quoted or flow value');
    return this.after(v);
  }

  /** Moves past a one-line value; the caller checks the next line's indentation (more is multi-line or an error). */
  private after(v: unknown): unknown {
    this.advance(this.le + 1);
    return v;
  }

  /** Spaces, then the line's end or a ` #` comment. */
  private restIsComment(i: number): boolean {
    const s = this.s;
    const start = i;
    while (s.charCodeAt(i) === SPACE) i++;
    return i === this.le || (i > start && s.charCodeAt(i) === HASH);
  }

  /** A plain scalar in block context: the rest of the line up to a ` #` comment, trailing spaces trimmed. */
  private blockPlain(q: number): unknown {
    const s = this.s;
    const c = s.charCodeAt(q);
    if (!isPlainStart(c)) throw new NotMine('an indicator character');
    let end = q;
    for (let i = q; i < this.le; i++) {
      const ch = s.charCodeAt(i);
      if (ch === HASH && s.charCodeAt(i - 1) === SPACE) break;
      // `a: b` would be a mapping on one line (an error), `a:` at the end a key.
      if (ch === COLON && (i + 1 === this.le || s.charCodeAt(i + 1) === SPACE)) throw new NotMine('": " in a plain scalar');
      if (ch !== SPACE) end = i + 1;
    }
    return this.plainSpan(q, end);
  }

  /** A single-quoted scalar on one line (`''` is a quote). */
  private sq(q: number): string {
    const s = this.s;
    let out = '';
    let seg = q + 1;
    for (let i = seg; i < this.le; i++) {
      if (s.charCodeAt(i) !== 0x27) continue;
      out += s.slice(seg, i);
      if (s.charCodeAt(i + 1) !== 0x27) {
        this.p = i + 1;
        return out;
      }
      out += "'";
      seg = ++i + 1;
    }
    throw new NotMine('a quoted scalar over several lines');
  }

  /** A double-quoted scalar on one line, with the escapes js-yaml knows but \U (its 8-digit arithmetic overflows). */
  private dq(q: number): string {
    const s = this.s;
    let out = '';
    let seg = q + 1;
    for (let i = seg; i < this.le; i++) {
      const c = s.charCodeAt(i);
      if (c === 0x22) {
        this.p = i + 1;
        return out === '' ? this.span(seg, i) : out + s.slice(seg, i);
      }
      if (c !== 0x5c) continue;
      out += s.slice(seg, i);
      const e = s[i + 1] ?? '';
      const simple = ESCAPES[e];
      if (simple !== undefined && i + 1 < this.le) {
        out += simple;
        i += 1;
      } else if (e === 'x' || e === 'u') {
        const digits = e === 'x' ? 2 : 4;
        const hex = s.slice(i + 2, i + 2 + digits);
        if (i + 2 + digits > this.le || !/^[0-9a-fA-F]+$/.test(hex)) throw new NotMine('a bad escape');
        out += String.fromCharCode(parseInt(hex, 16));
        i += 1 + digits;
      } else throw new NotMine('an escape this reader does not implement');
      seg = i + 1;
    }
    throw new NotMine('a quoted scalar over several lines');
  }

  /** `[a, "b", 3]`, `[]`, `{a: 1, b: [x]}` or `{}` on one line: simple keys, no comments inside. */
  private flow(q: number, depth: number): unknown {
    if (depth > DEPTH) throw new NotMine('deep');
    const s = this.s;
    const isMap = s.charCodeAt(q) === 0x7b;
    const close = isMap ? 0x7d : 0x5d;
    const list: unknown[] = [];
    const map: Record<string, unknown> = {};
    let i = this.skipSpaces(q + 1);
    while (s.charCodeAt(i) !== close) {
      let key = '';
      if (isMap) {
        // `{a: 1}`; `{a:1}` is the key "a:1" with a null value to js-yaml: declined with other key forms.
        const colon = this.keyEnd(i);
        if (colon === -1 || s.charCodeAt(colon + 1) !== SPACE) throw new NotMine('not a simple key in a flow mapping');
        key = this.key(i, colon);
        if (Object.hasOwn(map, key)) throw new NotMine('duplicate key');
        i = this.skipSpaces(colon + 1);
      }
      const c = s.charCodeAt(i);
      const v = c === 0x22 ? this.dq(i) : c === 0x27 ? this.sq(i) : c === 0x5b || c === 0x7b ? this.flow(i, depth + 1) : this.flowPlain(i);
      if (isMap) map[key] = v;
      else list.push(v);
      i = this.skipSpaces(this.p);
      const sep = s.charCodeAt(i);
      // A trailing comma is allowed (js-yaml reads `[a, b,]` as [a, b]).
      if (sep === 0x2c) i = this.skipSpaces(i + 1);
      else if (sep !== close) throw new NotMine('not a one-line flow collection');
    }
    this.p = i + 1;
    return isMap ? map : list;
  }

  private skipSpaces(i: number): number {
    while (this.s.charCodeAt(i) === SPACE) i++;
    return i;
  }

  /** A plain scalar inside a flow collection: up to `,` `[` `]` `{` `}`, trailing spaces trimmed. */
  private flowPlain(q: number): unknown {
    const s = this.s;
    const c = s.charCodeAt(q);
    const next = s.charCodeAt(q + 1);
    if (!isPlainStart(c) || (c === DASH && (next === SPACE || isFlowIndicator(next) || q + 1 >= this.le))) throw new NotMine('an indicator in a flow collection');
    let end = q;
    let i = q;
    for (; i < this.le; i++) {
      const ch = s.charCodeAt(i);
      if (isFlowIndicator(ch)) break;
      // `[a: 1]` is a list holding a mapping to js-yaml; `[a #b]` a comment inside a flow collection.
      if (ch === COLON) {
        const after = s.charCodeAt(i + 1);
        if (i + 1 === this.le || after === SPACE || isFlowIndicator(after)) throw new NotMine('":" in a flow scalar');
      }
      if (ch === HASH && s.charCodeAt(i - 1) === SPACE) throw new NotMine('a comment in a flow collection');
      if (ch !== SPACE) end = i + 1;
    }
    if (i === this.le) throw new NotMine('a flow collection over several lines');
    this.p = i;
    return this.plainSpan(q, end);
  }

  /**
   * A literal block scalar (`|`, `|-`, `|+`) whose value starts on the next line, as js-yaml's readBlockScalar reads
   * it: the first line's indentation (more than the collection's `n`) is the text's; a shorter non-empty line ends
   * it; empty lines inside are kept; the end is chomped (clip: one \n, strip: none, keep: all). Declined: an
   * explicit indentation (`|2`), no text at all, and empty lines before the first (they can raise the indentation).
   */
  private literal(q: number, n: number): string {
    const s = this.s;
    let h = q + 1;
    const chomp = s.charCodeAt(h);
    if (chomp === 0x2b || chomp === DASH) h++;
    if (!this.restIsComment(h)) throw new NotMine('a block scalar header this reader does not read');
    let from = this.le + 1;
    if (from >= this.len) throw new NotMine('an empty block scalar');
    let le = this.lineEnd(from);
    let i = from;
    while (s.charCodeAt(i) === SPACE) i++;
    const indent = i - from;
    if (i === le) throw new NotMine('an empty line first in a block scalar');
    if (indent <= n) throw new NotMine('an empty block scalar');
    const first = i;
    const firstEnd = le;
    // Undefined while there is only the first line: one line clipped is then a single slice (below), not two.
    let out: string | undefined;
    let empty = 0;
    for (from = le + 1; from < this.len; from = le + 1) {
      le = this.lineEnd(from);
      const max = from + indent;
      i = from;
      while (i < max && s.charCodeAt(i) === SPACE) i++;
      if (i === le) {
        empty++;
        continue;
      }
      if (i < max) break;
      out = (out ?? s.slice(first, firstEnd)) + '\n'.repeat(1 + empty) + s.slice(i, le);
      empty = 0;
    }
    // One line, clipped: its text and its own \n are one string already (a third fewer strings at 100,000 files).
    if (out === undefined && chomp !== 0x2b && chomp !== DASH && firstEnd < this.len) out = s.slice(first, firstEnd + 1);
    else {
      out ??= s.slice(first, firstEnd);
      if (chomp === 0x2b) out += '\n'.repeat(1 + empty);
      else if (chomp !== DASH) out += '\n';
    }
    if (from > this.len) from = this.len;
    this.advance(from);
    return out;
  }

  private lineEnd(from: number): number {
    const le = this.s.indexOf('\n', from);
    return le === -1 ? this.len : le;
  }
}

const ESCAPES: Readonly<Record<string, string>> = {
  '0': '\x00',
  a: '\x07',
  b: '\x08',
  t: '\t',
  n: '\n',
  v: '\x0b',
  f: '\x0c',
  r: '\r',
  e: '\x1b',
  ' ': ' ',
  '"': '"',
  '/': '/',
  '\\': '\\',
  N: '\x85',
  _: '\xa0',
  L: '\u2028',
  P: '\u2029',
};
