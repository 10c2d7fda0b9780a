import { CORE_SCHEMA, load, YAMLException, type LoadOptions } from 'js-yaml';
import { BackplaneError, ValidationErrors, type SourceLocation } from '../errors.js';
import { readFastYaml } from './fast-yaml.js';
import { checkExpansion, MAX_DEPTH, PRECISE_MAX_BYTES, pathText } from './limits.js';
import { YamlSource } from './yaml-source.js';

/**
 * A graph file's data plus a way back to its lines.
 *
 * Two parsers, on purpose: js-yaml reads a 1,000-resource graph ~6x faster than `yaml` on a cold start (28 ms vs
 * 174 ms, measured), and start-up is paid on every one-shot run; `yaml` keeps every node's position, which only an
 * error needs. So the data comes from js-yaml and positions are computed by `yaml` the first time an error asks.
 * Both read YAML 1.2's core schema, so they agree on what a value is (no timestamps, no `<<` merges).
 */
export interface GraphDocument {
  readonly file: string;
  readonly data: unknown;
  /** Where the value at `path` (keys and indexes from the root) is written; a key's own line for the last step. */
  readonly locate: (path: readonly PropertyKey[]) => SourceLocation;
  /** Where the value itself at `path` starts (for "must be a list"-style errors about the value's shape). */
  readonly locateValue: (path: readonly PropertyKey[]) => SourceLocation;
}

/** `fast: false`: js-yaml reads the text even when the fast reader would (tests compare the two). */
export function parseYamlDocument(file: string, text: string, options: { readonly fast?: boolean } = {}): GraphDocument {
  // The common shapes of a graph file first (~4x faster than js-yaml at 100,000 resources, src/frontends/fast-yaml.ts):
  // the same value js-yaml would return, or undefined and js-yaml reads it, errors and all.
  const fast = options.fast === false ? undefined : readFastYaml(text);
  const data = fast !== undefined ? fast.value : loadWithJsYaml(file, text);
  const places = yamlPlaces(file, text);
  // js-yaml shares an anchor's value among its aliases, so loading a bomb is cheap; everything after (the walk below,
  // zod, the fingerprints, a template's vars) would copy it out. Refuse it first, pointing at where it expands. What
  // the fast reader returns has no aliases (no shared values, no cycles) and nests at most MAX_DEPTH / 2 deep, so
  // there is nothing for the check to find (~48 ms at 100,000 resources).
  if (fast === undefined) checkExpansion(data, places.locate);
  unquoteModes(data, places.modeText);
  return { file, data, locate: places.locate, locateValue: places.locateValue };
}

/**
 * What parseYamlDocument's document for `text` locates, and `modeText`: the text unquoteModes puts back for a
 * resource's own `mode` that YAML read as a number. For a graph read straight into resources, with no document
 * (readFastNativeGraph), which must say and locate everything exactly as one read through the document would.
 */
export function yamlPlaces(file: string, text: string): {
  readonly locate: (path: readonly PropertyKey[]) => SourceLocation;
  readonly locateValue: (path: readonly PropertyKey[]) => SourceLocation;
  readonly modeText: (path: readonly PropertyKey[], value: number) => string | undefined;
} {
  const pos = new Positions(file, text);
  return {
    locate: (path) => pos.find(path, false),
    locateValue: (path) => pos.find(path, true),
    modeText: (path, value) => (pos.precise ? pos.source().scalarSource(path) : modeTextOfHugeFile(file, text, path, value)),
  };
}

function loadWithJsYaml(file: string, text: string): unknown {
  // js-yaml knows maxDepth (its default is the same); @types/js-yaml does not list it yet.
  const options: LoadOptions & { maxDepth: number } = { schema: CORE_SCHEMA, filename: file, maxDepth: MAX_DEPTH };
  try {
    return load(text, options);
  } catch (err) {
    const mark = err instanceof YAMLException ? err.mark : undefined;
    const where = { file, line: (mark?.line ?? 0) + 1, col: (mark?.column ?? 0) + 1 };
    // Too deep for js-yaml is too deep for the precise parser's recursion too: say so without asking it.
    if (err instanceof YAMLException && err.reason.startsWith('nesting exceeded maxDepth')) {
      throw new ValidationErrors([
        new BackplaneError('E_LIMIT', `nested more than ${MAX_DEPTH} levels deep`, { where, hint: 'flatten the data; nothing was applied' }),
      ]);
    }
    // Let the precise parser describe the problem; fall back to js-yaml's own words if it sees none.
    const src = new YamlSource(file, text);
    const errors = src.syntaxErrors();
    if (errors.length > 0) throw new ValidationErrors(errors);
    throw new ValidationErrors([
      new BackplaneError('E_YAML', `invalid YAML: ${err instanceof YAMLException ? err.reason : String(err)}`, {
        where,
        hint: 'fix the YAML syntax (indentation, quotes, a duplicate key); nothing was applied',
      }),
    ]);
  }
}

/**
 * Where a key or value at a path (keys and indexes from the root) is written in a YAML graph's text: what
 * GraphDocument.locate answers, for the validated-graph cache too (src/agent/graph-cache.ts), which keeps each
 * resource's path instead of its line so a vertex rebuilt from it names the very file:line:col a parse would.
 */
export function textLocator(file: string, text: string): (path: readonly PropertyKey[]) => SourceLocation {
  const pos = new Positions(file, text);
  return (path) => pos.find(path, false);
}

/** The precise parser, run the first time a position is asked for. */
class Positions {
  private src: YamlSource | undefined;
  /**
   * The precise parser needs ~50 bytes of memory and ~1 µs of CPU per byte of YAML (measured: 27 MB took 48 s and
   * 1.3 GB here), so one typo in a huge file would cost minutes or a V8 out-of-memory abort. Past PRECISE_MAX_BYTES
   * an error names the value's path instead of its line, as for a TypeScript graph.
   */
  readonly precise: boolean;
  constructor(
    private readonly file: string,
    private readonly text: string,
  ) {
    this.precise = text.length <= PRECISE_MAX_BYTES;
  }
  source(): YamlSource {
    return (this.src ??= new YamlSource(this.file, this.text));
  }
  find(path: readonly PropertyKey[], value: boolean): SourceLocation {
    if (!this.precise) return { file: `${this.file}: ${pathText(path)}`, line: 0, col: 0 };
    const src = this.source();
    return src.locate(src.doc.contents, path, value);
  }
}

/**
 * Puts back the text of every resource's `mode` written as an unquoted number. YAML 1.2 reads `mode: 644` and
 * `mode: 0644` as the decimal 644 (which is 0o1204: sticky, and no read bit for the owner), while everyone who writes
 * it means what chmod means. With the text, the file-mode parser reads the digits as chmod does and refuses what chmod
 * would (648, 644.0, -644), and `0o644` keeps YAML's own octal meaning. Only the precise parser keeps that text, so a
 * graph whose modes are all quoted never pays for it, nor does a file too large for it (see modeTextOfHugeFile).
 *
 * Only a resource's own `mode` (file and template, in either YAML format) and a collect rule's `set.mode` are meant:
 * a `mode` inside a template's `vars` is the user's data and stays the number YAML read.
 */
function unquoteModes(data: unknown, sourceOf: (path: readonly PropertyKey[], value: number) => string | undefined): void {
  if (!isMap(data)) return;
  const fix = (m: unknown, path: readonly PropertyKey[]): void => {
    if (isMap(m) && typeof m['mode'] === 'number') m['mode'] = sourceOf([...path, 'mode'], m['mode']) ?? m['mode'];
  };
  // Plain loops, and a path only for a numeric mode: forEach with an array per resource was ~80 ms of a cold
  // 100,000-resource parse whose modes are all quoted (measured 2026-12-03).
  const numeric = (m: unknown): boolean => isMap(m) && typeof m['mode'] === 'number';
  // Ours: resources: [...], collect: [{ set: {...} }]. mgmt's: resources (or types, res): { kind: [...] }.
  for (const key of ['resources', 'types', 'res']) {
    const top = data[key];
    if (Array.isArray(top)) {
      for (let i = 0; i < top.length; i++) if (numeric(top[i])) fix(top[i], [key, i]);
    } else if (isMap(top)) {
      for (const [kind, list] of Object.entries(top)) {
        if (Array.isArray(list)) for (let i = 0; i < list.length; i++) if (numeric(list[i])) fix(list[i], [key, kind, i]);
      }
    }
  }
  const rules = data['collect'];
  if (Array.isArray(rules)) {
    for (let i = 0; i < rules.length; i++) {
      const rule: unknown = rules[i];
      if (isMap(rule) && numeric(rule['set'])) fix(rule['set'], ['collect', i, 'set']);
    }
  }
}

/**
 * The text of an unquoted numeric mode in a file too large for the precise parser. Written in decimal digits, the
 * number's own digits are what chmod reads (`0644` loaded as 644 reads back as "644", the same mode), so that is
 * exact unless some mode is written another way (`0o644`, `0x1a4`, `644.0`, an alias): then refuse rather than guess.
 */
function modeTextOfHugeFile(file: string, text: string, path: readonly PropertyKey[], value: number): string {
  for (const m of text.matchAll(/(?:^|[\s{,])["']?mode["']?[ \t]*:[ \t]*([^\s,}\]#]*)/gm)) {
    const token = m[1] ?? '';
    if (!/^["']/.test(token) && !/^\d+$/.test(token))
      throw new ValidationErrors([
        new BackplaneError('E_YAML', `an unquoted mode written as "${token}" cannot be read back in a file this large (over ${PRECISE_MAX_BYTES} bytes)`, {
          where: { file: `${file}: ${pathText(path)}`, line: 0, col: 0 },
          hint: 'quote the modes ("0644") or write them in plain digits (644); nothing was applied',
        }),
      ]);
  }
  return String(value);
}

export function isMap(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** YAML's empty value (`key:` with nothing after it). */
export function isEmpty(v: unknown): boolean {
  return v === null || v === undefined;
}
