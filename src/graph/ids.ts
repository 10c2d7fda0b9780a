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
 * the id itself. The builder indexes 100,000 files by it: making, flattening (a concatenation is copied once more
 * when first hashed) and keeping a Map key per resource was ~110 ms and ~5,500 page faults of a cold start, most of
 * it memory touched for the first time (see VertexList).
 */
export function idHash(kind: string, name: string): number {
  laneA = FNV_OFFSET;
  laneB = FNV_OFFSET_B;
  let at = feed(kind, 0);
  at = feed1(0x5b, at);
  at = feed(name, at);
  feed1(0x5d, at);
  return mix(laneA ^ Math.imul(laneB, GOLDEN));
}

/**
 * A hash of any text: FNV-1a in two lanes, the even code units in one and the odd ones in the other, then mixed. Of
 * an id, its idHash. Two lanes: a lookup by id hashes it each time (a Map has the hash in the string), and one chain
 * of multiplications, each waiting for the last, took ~60 ns for a 30-character id, more than the Map's lookup.
 */
export function textHash(text: string): number {
  let a = FNV_OFFSET;
  let b = FNV_OFFSET_B;
  const n = text.length;
  let k = 0;
  for (; k + 1 < n; k += 2) {
    a = Math.imul(a ^ text.charCodeAt(k), FNV_PRIME);
    b = Math.imul(b ^ text.charCodeAt(k + 1), FNV_PRIME);
  }
  if (k < n) a = Math.imul(a ^ text.charCodeAt(k), FNV_PRIME);
  return mix(a ^ Math.imul(b, GOLDEN));
}

/** The two lanes of idHash as it feeds them part by part (no object made per hash). */
let laneA = 0;
let laneB = 0;

/** Feeds `s`, whose first code unit is at position `at` of the whole text, to the lanes; the position after it. */
function feed(s: string, at: number): number {
  const n = s.length;
  let k = 0;
  if ((at & 1) === 1 && n > 0) {
    laneB = Math.imul(laneB ^ s.charCodeAt(0), FNV_PRIME);
    k = 1;
  }
  for (; k + 1 < n; k += 2) {
    laneA = Math.imul(laneA ^ s.charCodeAt(k), FNV_PRIME);
    laneB = Math.imul(laneB ^ s.charCodeAt(k + 1), FNV_PRIME);
  }
  if (k < n) laneA = Math.imul(laneA ^ s.charCodeAt(k), FNV_PRIME);
  return at + n;
}

function feed1(c: number, at: number): number {
  if ((at & 1) === 0) laneA = Math.imul(laneA ^ c, FNV_PRIME);
  else laneB = Math.imul(laneB ^ c, FNV_PRIME);
  return at + 1;
}

/**
 * The lanes' starting values, drawn once per process. Names come from graph files and from other hosts' exports (a
 * misbehaving host chooses its own), and the index probes linearly: with a fixed hash anyone could compute thousands
 * of names that share a slot and make every build quadratic (a hash flood). V8 seeds its own string hash per
 * process for the same reason; Math.random is seeded from the OS and none of its output is shown to anyone.
 */
const FNV_OFFSET = (0x811c9dc5 ^ Math.floor(Math.random() * 0x100000000)) | 0;
const FNV_OFFSET_B = (0x050c5d1f ^ Math.floor(Math.random() * 0x100000000)) | 0;
const FNV_PRIME = 0x01000193;
const GOLDEN = 0x9e3779b1 | 0;

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
