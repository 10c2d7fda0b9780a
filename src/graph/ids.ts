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

/**
 * A hash of the id `kind[name]` worked out from its two parts, without making that string: equal to textHash of
 * the id itself (textHash). The builder indexes 100,000 files by it: making, flattening (a concatenation is copied once more
 * when first hashed) and keeping a Map key per resource was ~110 ms and ~5,500 page faults of a cold start, most of
 * it memory touched for the first time (see VertexList).
 */
export function idHash(kind: string, name: string): number {
  let h = FNV_OFFSET;
  for (let k = 0; k < kind.length; k++) h = Math.imul(h ^ kind.charCodeAt(k), FNV_PRIME);
  h = Math.imul(h ^ 0x5b, FNV_PRIME);
  for (let k = 0; k < name.length; k++) h = Math.imul(h ^ name.charCodeAt(k), FNV_PRIME);
  return mix(Math.imul(h ^ 0x5d, FNV_PRIME));
}

/** A hash of any text: FNV-1a over its UTF-16 code units, then mixed. Of an id, its idHash. */
export function textHash(text: string): number {
  let h = FNV_OFFSET;
  for (let k = 0; k < text.length; k++) h = Math.imul(h ^ text.charCodeAt(k), FNV_PRIME);
  return mix(h);
}

/** Whether `id` is `kind[name]`, compared in place. */
export function isIdOf(id: string, kind: string, name: string): boolean {
  const k = kind.length;
  return id.length === k + name.length + 2 && id.charCodeAt(k) === 0x5b && id.charCodeAt(id.length - 1) === 0x5d && id.startsWith(kind) && id.startsWith(name, k + 1);
}

const FNV_OFFSET = 0x811c9dc5 | 0;
const FNV_PRIME = 0x01000193;

/**
 * FNV's low bits depend only on the low bits of what came before (a multiplication carries upward only), and a
 * table by place uses the low bits: names that differ in one character would crowd together. Murmur3's finalizer
 * spreads every bit over all of them.
 */
function mix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}
