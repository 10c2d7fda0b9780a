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

/** A resource read from a YAML document at `base` (keys and indexes from the root). */
export function rawResource(
  fields: { kind: string; name: string; params: Record<string, unknown>; meta: unknown; export?: ExportTarget | undefined },
  locate: Locate,
  base: readonly PropertyKey[],
): RawResource {
  return new YamlResource(fields.kind, fields.name, fields.params, fields.meta, locate, base, fields.export);
}

/**
 * A resource of the native format, item `i` of its `resources` list: the same as rawResource at ['resources', i],
 * with the place kept as the number alone and the path made when asked (an error, the cache): one array less for
 * each of 100,000 resources, all held while the graph runs.
 */
export function nativeResource(kind: string, name: string, params: Record<string, unknown>, meta: unknown, exportTo: ExportTarget | undefined, locate: Locate, i: number): RawResource {
  return new YamlResource(kind, name, params, meta, locate, i, exportTo);
}

/**
 * Where in its document a resource from a YAML frontend was written (its path from the root), or undefined for one
 * from elsewhere (a module, the cluster). The validated-graph cache keeps this path, so a vertex rebuilt from the
 * cache finds its file:line the same way as one parsed from the text (src/agent/graph-cache.ts).
 */
export function sourcePath(r: RawResource): readonly PropertyKey[] | undefined {
  return r instanceof YamlResource ? r.base : undefined;
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
    // The document's locator and this resource's path in it, rather than a closure over both: one object less each.
    // A number i is ['resources', i] (nativeResource).
    private readonly find: Locate,
    private readonly at: readonly PropertyKey[] | number,
    exportTo: ExportTarget | undefined,
  ) {
    if (exportTo !== undefined) this.export = exportTo;
  }
  get base(): readonly PropertyKey[] {
    return typeof this.at === 'number' ? ['resources', this.at] : this.at;
  }
  get loc(): SourceLocation {
    return this.find(this.base);
  }
  locate(path: readonly PropertyKey[]): SourceLocation {
    return this.find([...this.base, ...path]);
  }
  locateMeta(path: readonly PropertyKey[]): SourceLocation {
    return this.find([...this.base, 'meta', ...path]);
  }
}
