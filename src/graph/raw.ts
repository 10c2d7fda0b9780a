import type { BackplaneError, SourceLocation } from '../errors.js';

/**
 * What a frontend (YAML, mgmt YAML, TypeScript) hands to the graph builder: unvalidated declarations that still know
 * where in the user's file they came from, so every later error can point at a line.
 */
export interface RawResource {
  readonly kind: string;
  readonly name: string;
  readonly params: Record<string, unknown>;
  readonly meta: unknown;
  readonly loc: SourceLocation;
  /** Location of a parameter (path relative to params) or of the resource when the path is unknown. */
  locate(path: readonly PropertyKey[]): SourceLocation;
  /** Location of a metaparam (path relative to meta). */
  locateMeta(path: readonly PropertyKey[]): SourceLocation;
}

export interface RawEdge {
  /** `kind[name]` or `kind:name` */
  readonly from: string;
  readonly to: string;
  /** The target is refreshed when the source changed something. */
  readonly notify: boolean;
  readonly loc: SourceLocation;
}

export interface RawGraph {
  /** Path of the file (or module) the graph came from. */
  readonly source: string;
  readonly resources: readonly RawResource[];
  readonly edges: readonly RawEdge[];
  /** Problems the frontend found that do not stop it from reading the rest. */
  readonly errors: readonly BackplaneError[];
}
