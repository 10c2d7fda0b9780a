import type { SourceLocation } from '../errors.js';
import type { ExportTarget, RawResource } from '../graph/raw.js';

export type Locate = (path: readonly PropertyKey[]) => SourceLocation;
export type At = (...rest: PropertyKey[]) => SourceLocation;

/*
 * Closures made inside a frontend's reading loop would keep that function's whole scope alive — the parsed document
 * included — for as long as the graph runs (V8 links a closure to every enclosing scope). Made here, they hold only
 * what they are given: 10,000 resources do not pin the YAML tree they came from.
 */

/** A location finder for the value at `base` (plus a further path) in a document. */
export function locator(locate: Locate, base: readonly PropertyKey[]): At {
  return (...rest) => locate([...base, ...rest]);
}

export function rawResource(
  fields: { kind: string; name: string; params: Record<string, unknown>; meta: unknown; export?: ExportTarget | undefined },
  at: At,
): RawResource {
  return new YamlResource(fields.kind, fields.name, fields.params, fields.meta, at, fields.export);
}

/**
 * A class, not an object literal with getters: V8 keeps such literals as dictionaries (a hash table of ~400 bytes
 * each), where a class instance is a compact fixed-shape object — 100,000 of them are held while a graph builds.
 */
class YamlResource implements RawResource {
  readonly export?: ExportTarget;
  constructor(
    readonly kind: string,
    readonly name: string,
    readonly params: Record<string, unknown>,
    readonly meta: unknown,
    private readonly at: At,
    exportTo: ExportTarget | undefined,
  ) {
    if (exportTo !== undefined) this.export = exportTo;
  }
  get loc(): SourceLocation {
    return this.at();
  }
  locate(path: readonly PropertyKey[]): SourceLocation {
    return this.at(...path);
  }
  locateMeta(path: readonly PropertyKey[]): SourceLocation {
    return this.at('meta', ...path);
  }
}
