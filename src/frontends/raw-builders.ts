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
  return {
    kind: fields.kind,
    name: fields.name,
    params: fields.params,
    meta: fields.meta,
    ...(fields.export === undefined ? {} : { export: fields.export }),
    get loc() {
      return at();
    },
    locate: (path) => at(...path),
    locateMeta: (path) => at('meta', ...path),
  };
}
