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
  /**
   * Set when the resource is exported rather than managed here (Puppet's `@@`): to every host ('*') or to the
   * named ones. Exported resources are validated like any other, then published for other hosts to collect.
   */
  readonly export?: ExportTarget;
  /** For a resource collected from the cluster: the host that exported it. */
  readonly origin?: string;
}

export type ExportTarget = '*' | readonly string[];

/**
 * Which exported resources this host collects: those of `kind` exported by `from` (default: every host, this one
 * included) to this host. Collecting is the collector's decision: a collected resource is built from the rule's
 * `set`, plus exactly the parameters it `take`s from the exporter; the kind's defaults fill in the rest. Strings in
 * `set` may use `{host}` (the exporter), `{name}` and `{basename}` (of the resource's name), e.g.
 * `path: /srv/collected/{host}-{basename}`.
 *
 * Without `take`, a rule takes the kind's parameters that give no power here (a file's content and plain mode, not
 * its source, owner or setuid bits: see CollectPolicy). An export that chooses a power parameter the rule neither
 * takes nor sets is not collected at all — dropping it could give the resource more power (a service whose `user`
 * is dropped runs as root) or a meaning nobody wrote (a file whose `source` is dropped comes out empty).
 */
export interface CollectRule {
  readonly kind: string;
  readonly from: '*' | readonly string[];
  readonly set: Readonly<Record<string, unknown>>;
  /** The exporter's parameters this rule accepts; undefined = the kind's parameters that give no power. */
  readonly take?: readonly string[] | undefined;
  readonly loc: SourceLocation;
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
  /** What this graph collects from other hosts' exports (empty when it collects nothing). */
  readonly collect?: readonly CollectRule[];
}

/**
 * `out[key] = value` for a parameter copied out of a parsed map, except that a key named `__proto__` stays an own
 * property, which the kind's schema then reports as an unknown parameter at its line. The plain assignment made the
 * value the copy's prototype: its fields read as parameters, past the unknown-parameter check (a YAML or JSON parser
 * keeps such a key as an own property, so it reaches these copies).
 */
export function setParam(out: Record<string, unknown>, key: string, value: unknown): void {
  if (key === '__proto__') Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
  else out[key] = value;
}
