import { CORE_SCHEMA, load, YAMLException } from 'js-yaml';
import { BackplaneError, ValidationErrors, type SourceLocation } from '../errors.js';
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

export function parseYamlDocument(file: string, text: string): GraphDocument {
  let data: unknown;
  try {
    data = load(text, { schema: CORE_SCHEMA, filename: file });
  } catch (err) {
    // Let the precise parser describe the problem; fall back to js-yaml's own words if it sees none.
    const src = new YamlSource(file, text);
    const errors = src.syntaxErrors();
    if (errors.length > 0) throw new ValidationErrors(errors);
    const mark = err instanceof YAMLException ? err.mark : undefined;
    throw new ValidationErrors([
      new BackplaneError('E_YAML', `invalid YAML: ${err instanceof YAMLException ? err.reason : String(err)}`, {
        where: { file, line: (mark?.line ?? 0) + 1, col: (mark?.column ?? 0) + 1 },
        hint: 'fix the YAML syntax (indentation, quotes, a duplicate key); nothing was applied',
      }),
    ]);
  }
  let src: YamlSource | undefined;
  const find = (path: readonly PropertyKey[], value: boolean): SourceLocation => {
    src ??= new YamlSource(file, text);
    return src.locate(src.doc.contents, path, value);
  };
  return { file, data, locate: (path) => find(path, false), locateValue: (path) => find(path, true) };
}

export function isMap(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** YAML's empty value (`key:` with nothing after it). */
export function isEmpty(v: unknown): boolean {
  return v === null || v === undefined;
}
