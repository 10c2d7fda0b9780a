/**
 * Resource identity. A resource is `kind[name]` everywhere a person reads it (logs, errors, dot labels); graph
 * files may also write the `kind:name` form, which is easier to type in YAML flow lists.
 */
export type ResourceId = string & { readonly __brand: 'ResourceId' };

export function resourceId(kind: string, name: string): ResourceId {
  return `${kind}[${name}]` as ResourceId;
}

const BRACKET = /^([a-z][a-z0-9_-]*)\[(.+)\]$/s;
const COLON = /^([a-z][a-z0-9_-]*):(.+)$/s;

/** Parses `kind[name]` or `kind:name`; returns undefined when the text is neither. */
export function parseRef(ref: string): { kind: string; name: string } | undefined {
  const m = BRACKET.exec(ref) ?? COLON.exec(ref);
  if (m === null) return undefined;
  const kind = m[1];
  const name = m[2];
  if (kind === undefined || name === undefined) return undefined;
  return { kind, name };
}

export function splitId(id: ResourceId): { kind: string; name: string } {
  const parsed = parseRef(id);
  if (parsed === undefined) throw new Error(`not a resource id: ${id}`);
  return parsed;
}
