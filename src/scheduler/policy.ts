import { z } from 'zod';
import { keys, parseNamespacePolicyKey } from '../cluster/keys.js';
import type { Store } from '../cluster/store.js';
import type { TrustView } from '../cluster/trust.js';
import { withUnit } from '../graph/schema-util.js';
import { parseSize } from '../resources/svc-schema.js';
import type { Checked } from './records.js';
import type { SchedState } from './state.js';
import { unwrapSigned } from './records.js';
import { parseDuration } from '../util/duration.js';
import { once } from '../util/once.js';
import { DEFAULT_NAMESPACE, NAMESPACE_NAME, namespaceName, parseCpu } from './names.js';
import { INHERITABLE_FIELDS, type InheritableField, type NamespaceDefaults, type NamespacePolicy, type NamespaceQuota, type Resources, type ServiceSpec, type UpdatePolicy } from './types.js';

/**
 * Global policy: namespaces. Every service belongs to one (`namespace:` in its spec, `default` when it names none);
 * an operator may give a namespace a **quota** (cpu, memory, instances over all its services' instances, which
 * placement enforces) and **defaults** (update policy fields and the disruption budget, which every service of the
 * namespace inherits for the fields its spec does not write). docs/namespaces.md is the user's guide.
 *
 * A namespace's policy is the operator record `policy/namespaces/<ns>`, signed by an operator host and opened like
 * a service spec (records.ts): `{by, record}`, believed only when `by` operates now and the signature is `by`'s for
 * that key. Removal is a signed tombstone: a deleted key could be anyone's doing. A namespace without a (believed)
 * policy has no quota and no defaults.
 *
 * Everything below the store functions is pure: placement (placement.ts) counts quotas with QuotaLedger over the
 * snapshot, and the controller reads every spec through effectiveSpec.
 */

// ---- the document an operator writes (the API's body; the CLI builds one from its flags) -----------------------------
//
// It has the record's own shape and names (those of a spec's parsed update policy: minHealthyMs, maxParallel 0 for
// all at once), so what `namespaces.get` answers can be put back as it is; amounts may also be written with units
// ("500m", "8G", "30s"). Parsing it twice gives the same value (numbers stay as they are), which the API relies on:
// the CLI's client validates an input that the server validates again.

const cpuAmount = () =>
  withUnit(parseCpu, 'cpu amount', 'cores (4) or millicores ("500m"), more than 0', 'cores (number) or millicores: 4, "2500m"');
const sizeAmount = () =>
  withUnit((v) => {
    const n = parseSize(v);
    return n === undefined || n <= 0 ? undefined : n;
  }, 'size', 'bytes (8589934592) or a value with a unit (512M, 8G), more than 0', 'bytes (number) or a string with a binary unit: 512M, 8G');
/** Milliseconds: a number (ms), or a string with a unit ("250ms", "30s", "5m"). */
const msAmount = () =>
  withUnit((v) => (typeof v === 'number' ? (Number.isFinite(v) ? Math.round(v) : undefined) : /^\s*\d+(?:\.\d+)?\s*(ms|s|m|h)\s*$/.test(v) ? parseDuration(v) : undefined), 'duration', 'milliseconds (30000) or a value with a unit ("30s", "5m")', 'milliseconds (number) or a string with a unit: "250ms", "30s", "5m"');
const wholeNumber = (what: string, min = 0) =>
  z
    .number({ error: (i) => (i.input === undefined ? undefined : `${what} is a whole number >= ${min}`) })
    .int(`${what} is a whole number >= ${min}`)
    .min(min, `${what} is a whole number >= ${min}`);

const quotaDocSchema = once(() =>
  z.strictObject({
    cpu: cpuAmount().optional().meta({ description: 'cores the namespace\'s instances may reserve together: 4, "2500m"' }),
    memory: sizeAmount().optional().meta({ description: 'memory the namespace\'s instances may reserve together: bytes, or 8G, 512M' }),
    instances: wholeNumber('quota.instances').optional().meta({ description: 'instances the namespace may run together (0: none)' }),
  }),
);

/** A spec's update policy (types.ts UpdatePolicy), every field optional: what the namespace's services inherit. */
const updateDefaultsDocSchema = once(() =>
  z
    .strictObject({
      maxParallel: wholeNumber('maxParallel').optional().meta({ description: 'instances replaced at a time; 0 = all at once (strategy parallel)' }),
      minHealthyMs: msAmount().optional(),
      healthyDeadlineMs: msAmount().optional(),
      progressDeadlineMs: msAmount().optional().meta({ description: '0 = no deadline; at least healthyDeadlineMs' }),
      canary: wholeNumber('canary').optional(),
      autoPromote: z.boolean().optional(),
      autoRevert: z.boolean().optional(),
      startFirst: z.boolean().optional(),
    })
    .superRefine((u, ctx) => {
      if (u.progressDeadlineMs !== undefined && u.healthyDeadlineMs !== undefined && u.progressDeadlineMs !== 0 && u.healthyDeadlineMs !== 0 && u.progressDeadlineMs < u.healthyDeadlineMs)
        ctx.addIssue({ code: 'custom', path: ['progressDeadlineMs'], message: 'progressDeadlineMs is shorter than healthyDeadlineMs: a step may take up to healthyDeadlineMs; raise it (or 0: no deadline)' });
    }),
);

const defaultsDocSchema = once(() =>
  z.strictObject({
    update: updateDefaultsDocSchema().optional().meta({ description: 'update policy fields (a spec\'s update block, parsed: maxParallel 0 = all at once, durations in ms)' }),
    maxUnavailable: wholeNumber('maxUnavailable').optional().meta({ description: 'the disruption budget of services that do not set one' }),
  }),
);

/** A namespace's policy as an operator writes it (built on first use: every agent start loads this module): `{ quota: {cpu, memory, instances}, defaults: {update, maxUnavailable} }`. */
export const policyDocumentSchema = once(() =>
  z.strictObject({
    name: namespaceName().optional().meta({ description: 'the namespace (when given, it must be the one named in the path or command)' }),
    quota: quotaDocSchema().optional(),
    defaults: defaultsDocSchema().optional(),
  }),
);
export type PolicyDocument = z.input<ReturnType<typeof policyDocumentSchema>>;

/** A policy without its time: what a document says. */
export type PolicyBody = Omit<NamespacePolicy, 'updatedAt'>;

/**
 * Validates a namespace's policy document: every problem, each with where it is (`defaults.update.maxParallel: ...`).
 * The result is the record's form (bytes, cores, milliseconds).
 */
export function parsePolicyDocument(name: string, data: unknown): { ok: true; value: PolicyBody } | { ok: false; problems: string[] } {
  const problems: string[] = [];
  if (!NAMESPACE_NAME.test(name)) problems.push(`namespace "${name}": 1-63 characters of a-z, 0-9 and "-", starting and ending with a letter or digit (e.g. team-a)`);
  const r = policyDocumentSchema().safeParse(data ?? {});
  if (!r.success) problems.push(...policyProblems(r.error.issues));
  else if (r.data.name !== undefined && r.data.name !== name) problems.push(`name: the document is for namespace "${r.data.name}", not "${name}"`);
  if (problems.length > 0 || !r.success) return { ok: false, problems };
  return { ok: true, value: policyBodyOf(name, r.data) };
}

/** zod's issues as "where: what" lines, unknown keys with the ones known there. */
export function policyProblems(issues: readonly z.core.$ZodIssue[]): string[] {
  return issues.map((i) => {
    const at = i.path.map(String).join('.');
    if (i.code === 'unrecognized_keys') return `${at === '' ? '' : `${at}: `}unknown key${i.keys.length === 1 ? '' : 's'} ${i.keys.map((k) => `"${k}"`).join(', ')} (known here: ${knownAt(i.path).join(', ')})`;
    return `${at === '' ? 'the policy' : at}: ${i.message}`;
  });
}

/** A parsed document (policyDocumentSchema's output) in the record's form. */
export function policyBodyOf(name: string, d: z.output<ReturnType<typeof policyDocumentSchema>>): PolicyBody {
  const quota: NamespaceQuota = prune({ cpu: d.quota?.cpu, memory: d.quota?.memory, instances: d.quota?.instances });
  const update: Partial<UpdatePolicy> = prune({ ...d.defaults?.update });
  const defaults: NamespaceDefaults = prune({ update: Object.keys(update).length === 0 ? undefined : update, maxUnavailable: d.defaults?.maxUnavailable });
  return { name, ...(Object.keys(quota).length === 0 ? {} : { quota }), ...(Object.keys(defaults).length === 0 ? {} : { defaults }) };
}

function knownAt(path: readonly PropertyKey[]): string[] {
  const [a, b] = path;
  if (a === undefined) return Object.keys(policyDocumentSchema().shape);
  if (a === 'quota') return Object.keys(quotaDocSchema().shape);
  if (a === 'defaults' && b === 'update') return ['maxParallel', 'minHealthyMs', 'healthyDeadlineMs', 'progressDeadlineMs', 'canary', 'autoPromote', 'autoRevert', 'startFirst'];
  if (a === 'defaults') return Object.keys(defaultsDocSchema().shape);
  return [];
}

/** `o` without its undefined fields (exactOptionalPropertyTypes: an optional field is absent, never undefined). */
function prune<T extends object>(o: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as { [K in keyof T]?: Exclude<T[K], undefined> };
}

// ---- the record ------------------------------------------------------------------------------------------------------

const num = z.number().finite();
const nonneg = num.nonnegative();
const quotaRecordSchema = z.lazy(() => z.strictObject({ cpu: num.positive().optional(), memory: num.positive().optional(), instances: z.number().int().min(0).optional() }));
const defaultsRecordSchema = z.lazy(() => z.strictObject({
  update: z
    .strictObject({
      maxParallel: z.number().int().min(0).optional(),
      minHealthyMs: nonneg.optional(),
      healthyDeadlineMs: nonneg.optional(),
      progressDeadlineMs: nonneg.optional(),
      canary: z.number().int().min(0).optional(),
      autoPromote: z.boolean().optional(),
      autoRevert: z.boolean().optional(),
      startFirst: z.boolean().optional(),
    })
    .optional(),
  maxUnavailable: z.number().int().min(0).optional(),
}));
export const namespacePolicySchema = z.lazy(() => z.strictObject({
  name: z.string().regex(NAMESPACE_NAME),
  quota: quotaRecordSchema.optional(),
  defaults: defaultsRecordSchema.optional(),
  updatedAt: z.string(),
}));

/** What `policy/namespaces/<ns>` holds (signed by an operator host): the policy, or its removal. */
export type PolicyRecord = NamespacePolicy | { readonly removed: true; readonly name: string; readonly at: string };

const policyRecordSchema = z.lazy(() => z.union([namespacePolicySchema, z.strictObject({ removed: z.literal(true), name: z.string(), at: z.string() })]));

/** A `policy/namespaces/<ns>` value: `{by, record}` whose record an operator host signed for that key. */
export function openPolicyRecord(view: TrustView, ns: string, value: string): Checked<PolicyRecord> & { by?: string } {
  const w = unwrapSigned(value);
  if (w === undefined) return { ok: false, why: 'not a signed namespace policy ({by, record})' };
  if (!view.mayOperate(w.by)) return { ok: false, why: `host "${w.by}" may not set namespace policy (not an operator: \`backplane hosts approve ${w.by} --operator\`)` };
  const v = view.verify(w.by, keys.namespacePolicy(ns), w.record);
  if (!v.ok) return { ok: false, why: v.why };
  let data: unknown;
  try {
    data = JSON.parse(v.body);
  } catch {
    return { ok: false, why: 'the signed namespace policy is not JSON' };
  }
  const r = policyRecordSchema.safeParse(data);
  if (!r.success) {
    const i = r.error.issues[0];
    return { ok: false, why: `the signed namespace policy is malformed (${i === undefined ? '?' : `${i.path.join('.') || 'value'}: ${i.message}`})` };
  }
  if (r.data.name !== ns) return { ok: false, why: `the policy is for namespace "${r.data.name}", not "${ns}"` };
  return { ok: true, value: r.data as PolicyRecord, seq: v.seq, by: w.by };
}

export interface PolicyEntry {
  readonly policy: NamespacePolicy;
  /** The operator host that signed it. */
  readonly by: string;
  readonly modRevision: number;
}

/**
 * Every namespace's policy the store holds that an operator signed: removals and records that fail their checks
 * are left out (the latter listed in `problems`, like every other bad record).
 */
export async function readPolicies(store: Store, view: TrustView, opts: { signal?: AbortSignal } = {}): Promise<{ policies: Map<string, PolicyEntry>; problems: string[]; revision: number }> {
  const { kvs, revision } = await store.list(keys.namespacePolicyPrefix, opts.signal === undefined ? {} : { signal: opts.signal });
  const policies = new Map<string, PolicyEntry>();
  const problems: string[] = [];
  for (const kv of kvs) {
    const ns = parseNamespacePolicyKey(kv.key);
    const r = ns === undefined ? undefined : openPolicyRecord(view, ns, kv.value);
    if (ns === undefined || r === undefined) problems.push(`${kv.key}: not a namespace policy key`);
    else if (!r.ok) problems.push(`${kv.key}: ${r.why}`);
    else if (!('removed' in r.value)) policies.set(ns, { policy: r.value, by: r.by ?? '?', modRevision: kv.modRevision });
  }
  return { policies, problems, revision };
}

/** Who signs operator records (cli/operator.ts's operatorSigner): `sign` answers the `{by, record}` value. */
export interface PolicySigner {
  readonly name: string;
  sign(key: string, body: string): string;
}

/** The key and signed value of a namespace's policy (or its removal). */
export function sealPolicy(signer: PolicySigner, record: PolicyRecord): { key: string; value: string } {
  const key = keys.namespacePolicy(record.name);
  return { key, value: signer.sign(key, JSON.stringify(record)) };
}

/** Writes a namespace's policy, replacing what it had. */
export async function putPolicy(store: Store, signer: PolicySigner, body: PolicyBody, now = new Date()): Promise<NamespacePolicy> {
  const checked = namespacePolicySchema.safeParse({ ...body, updatedAt: now.toISOString() });
  if (!checked.success) throw new Error(`not a namespace policy: ${checked.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  const policy = checked.data as NamespacePolicy;
  const { key, value } = sealPolicy(signer, policy);
  await store.put(key, value);
  return policy;
}

/** Removes a namespace's policy with a signed tombstone: its services keep running, without quota or defaults. */
export async function removePolicy(store: Store, signer: PolicySigner, ns: string, now = new Date()): Promise<void> {
  const { key, value } = sealPolicy(signer, { removed: true, name: ns, at: now.toISOString() });
  await store.put(key, value);
}

// ---- defaults ----------------------------------------------------------------------------------------------------------

export function namespaceOf(spec: Pick<ServiceSpec, 'namespace'>): string {
  return spec.namespace ?? DEFAULT_NAMESPACE;
}

/**
 * The spec the controller runs: the operator's, with each field it did not write (spec.inherits) taken from its
 * namespace's defaults when the namespace sets it; otherwise the built-in default the spec already holds. Inheritance
 * order: the spec, then its namespace's defaults, then the built-in defaults. Pure; the same spec object comes back
 * when nothing is inherited, so callers may compare by identity.
 *
 * Inherited values that would contradict the spec's own are settled here rather than refused (the operator who set
 * the namespace default could not see every spec): a progress deadline shorter than the healthy deadline is raised to
 * it. (The canary count is bounded by count where it is used.)
 */
export function effectiveSpec(spec: ServiceSpec, policies: ReadonlyMap<string, NamespacePolicy> | undefined): ServiceSpec {
  const inherits = spec.inherits;
  if (inherits === undefined || inherits.length === 0 || policies === undefined) return spec;
  const d = policies.get(namespaceOf(spec))?.defaults;
  if (d === undefined) return spec;
  const update: { -readonly [K in keyof UpdatePolicy]: UpdatePolicy[K] } = { ...spec.update };
  let maxUnavailable = spec.maxUnavailable;
  let changed = false;
  for (const f of inherits) {
    if (f === 'maxUnavailable') {
      if (d.maxUnavailable !== undefined) {
        maxUnavailable = d.maxUnavailable;
        changed = true;
      }
      continue;
    }
    const v = d.update?.[f];
    if (v === undefined) continue;
    (update as Record<Exclude<InheritableField, 'maxUnavailable'>, unknown>)[f] = v;
    changed = true;
  }
  if (!changed) return spec;
  if (update.progressDeadlineMs !== 0 && update.healthyDeadlineMs !== 0 && update.progressDeadlineMs < update.healthyDeadlineMs) update.progressDeadlineMs = update.healthyDeadlineMs;
  const { maxUnavailable: _old, ...rest } = spec;
  return { ...rest, update, ...(maxUnavailable === undefined ? {} : { maxUnavailable }) };
}

/** Which of a spec's update fields (and maxUnavailable) come from where: 'spec', 'namespace' or 'built-in'. */
export function defaultsSource(spec: ServiceSpec, policies: ReadonlyMap<string, NamespacePolicy> | undefined): Record<InheritableField, 'spec' | 'namespace' | 'built-in'> {
  const d = policies?.get(namespaceOf(spec))?.defaults;
  const inherits = new Set(spec.inherits ?? []);
  const out = {} as Record<InheritableField, 'spec' | 'namespace' | 'built-in'>;
  for (const f of INHERITABLE_FIELDS) {
    const fromNs = f === 'maxUnavailable' ? d?.maxUnavailable !== undefined : d?.update?.[f] !== undefined;
    out[f] = spec.inherits === undefined || !inherits.has(f) ? 'spec' : fromNs ? 'namespace' : 'built-in';
  }
  return out;
}

// ---- quotas ------------------------------------------------------------------------------------------------------------

export interface QuotaUse {
  readonly cpu: number;
  readonly memory: number;
  readonly instances: number;
}

export type QuotaDimension = 'cpu' | 'memory' | 'instances';

/** Why a quota refused an instance: each dimension it would go over. */
export interface QuotaRefusal {
  readonly namespace: string;
  readonly over: readonly { readonly dim: QuotaDimension; readonly used: number; readonly limit: number; readonly need: number }[];
}

const CPU_EPS = 1e-9;
const MEM_EPS = 1e-6;

/**
 * What each namespace uses, counted the way quotas count it: per instance (service and index), not per alloc. An
 * index holds the largest cpu and memory of the allocs it has (assigned, or still stopping), so a replacement — a
 * stop-first or start-first update step, a canary, a drain's move, a lost or failed instance placed again — takes
 * over the share of the instance it replaces and costs only what it needs beyond it (a bigger new version). A new
 * index (a first deploy, a scale-up, a new service) costs its whole size and one instance.
 */
export class QuotaLedger {
  private readonly used = new Map<string, { cpu: number; memory: number; instances: number }>();
  private readonly slots = new Map<string, { cpu: number; memory: number }>();

  /** `quotas` undefined: every namespace is counted (for showing use); else only those with a quota. */
  constructor(private readonly quotas?: ReadonlyMap<string, NamespaceQuota>) {}

  counts(ns: string): boolean {
    return this.quotas === undefined || this.quotas.has(ns);
  }

  usage(ns: string): QuotaUse {
    return this.used.get(ns) ?? { cpu: 0, memory: 0, instances: 0 };
  }

  namespaces(): string[] {
    return [...this.used.keys()].sort();
  }

  /** What placing `res` at this index would add to the namespace's use. */
  cost(ns: string, service: string, index: number, res: Resources): QuotaUse {
    const slot = this.slots.get(slotKey(ns, service, index));
    if (slot === undefined) return { cpu: res.cpu, memory: res.memory, instances: 1 };
    return { cpu: Math.max(0, res.cpu - slot.cpu), memory: Math.max(0, res.memory - slot.memory), instances: 0 };
  }

  add(ns: string, service: string, index: number, res: Resources): void {
    if (!this.counts(ns)) return;
    const c = this.cost(ns, service, index, res);
    const u = this.used.get(ns) ?? { cpu: 0, memory: 0, instances: 0 };
    u.cpu += c.cpu;
    u.memory += c.memory;
    u.instances += c.instances;
    this.used.set(ns, u);
    const key = slotKey(ns, service, index);
    const slot = this.slots.get(key);
    this.slots.set(key, slot === undefined ? { cpu: res.cpu, memory: res.memory } : { cpu: Math.max(slot.cpu, res.cpu), memory: Math.max(slot.memory, res.memory) });
  }

  /**
   * Undefined when the namespace's quota has room for this instance; else what it would go over. Only what the
   * instance adds is checked: a namespace over its quota (a quota lowered below its use) still replaces its instances.
   */
  refusal(ns: string, service: string, index: number, res: Resources): QuotaRefusal | undefined {
    const q = this.quotas?.get(ns);
    if (q === undefined) return undefined;
    const c = this.cost(ns, service, index, res);
    const u = this.usage(ns);
    const over: { dim: QuotaDimension; used: number; limit: number; need: number }[] = [];
    if (q.instances !== undefined && c.instances > 0 && u.instances + c.instances > q.instances) over.push({ dim: 'instances', used: u.instances, limit: q.instances, need: c.instances });
    if (q.cpu !== undefined && c.cpu > CPU_EPS && u.cpu + c.cpu > q.cpu + CPU_EPS) over.push({ dim: 'cpu', used: u.cpu, limit: q.cpu, need: c.cpu });
    if (q.memory !== undefined && c.memory > MEM_EPS && u.memory + c.memory > q.memory + MEM_EPS) over.push({ dim: 'memory', used: u.memory, limit: q.memory, need: c.memory });
    return over.length === 0 ? undefined : { namespace: ns, over };
  }
}

function slotKey(ns: string, service: string, index: number): string {
  return `${ns}\0${service}\0${index}`;
}

/** Namespaces with a quota, from their policies. */
export function quotasOf(policies: ReadonlyMap<string, NamespacePolicy> | undefined): Map<string, NamespaceQuota> {
  const out = new Map<string, NamespaceQuota>();
  for (const [ns, p] of policies ?? []) if (p.quota !== undefined && Object.keys(p.quota).length > 0) out.set(ns, p.quota);
  return out;
}

/**
 * `namespace team-a quota: memory 1G of 1G used (raise it: backplane namespace set team-a --memory 1.5G)`. `need` is
 * what every refused instance together needs, so the suggested quota places them all (as far as the quota goes).
 */
export function quotaReason(ns: string, over: readonly { readonly dim: QuotaDimension; readonly used: number; readonly limit: number; readonly need: number }[]): string {
  const used = over.map((o) => `${o.dim} ${formatAmount(o.dim, o.used)} of ${formatAmount(o.dim, o.limit)} used`).join(', ');
  const raise = over.map((o) => `--${o.dim} ${formatAmount(o.dim, Math.max(o.used, o.limit) + o.need, true)}`).join(' ');
  return `namespace ${ns} quota: ${used} (raise it: backplane namespace set ${ns} ${raise})`;
}

/** cpu as cores (3 decimals), memory as a size, instances as a number; `up` rounds a size up to a whole M. */
export function formatAmount(dim: QuotaDimension, n: number, up = false): string {
  if (dim === 'instances') return String(n);
  if (dim === 'cpu') return String((up ? Math.ceil(n * 1000 - 1e-6) : Math.round(n * 1000)) / 1000);
  return formatBytes(n, up);
}

/** 1073741824 -> "1G", 1610612736 -> "1.5G", 200M -> "200M"; `up`: never below `n` (whole M, or exact G). */
export function formatBytes(n: number, up = false): string {
  const M = 1024 ** 2;
  const G = 1024 ** 3;
  if (up) {
    const m = Math.ceil(n / M - 1e-9);
    return m % 1024 === 0 ? `${m / 1024}G` : `${m}M`;
  }
  if (n >= G) return `${Number.isInteger(n / G) ? n / G : (n / G).toFixed(1)}G`;
  if (n >= M) return `${Number.isInteger(n / M) ? n / M : (n / M).toFixed(1)}M`;
  return `${n}`;
}

/**
 * What each namespace uses now, counted as quotas count it (QuotaLedger), and which services it has: every assigned
 * alloc, and those still stopping. A service's namespace is its current spec's (else its instances' spec's).
 */
export function namespaceUsage(state: Pick<SchedState, 'assigns' | 'statuses' | 'services'>): Map<string, QuotaUse & { readonly services: readonly string[] }> {
  const ledger = new QuotaLedger();
  const members = new Map<string, Set<string>>();
  const nsOf = (service: string, fallback?: ServiceSpec): string => {
    const spec = state.services.get(service)?.spec ?? fallback;
    return spec === undefined ? DEFAULT_NAMESPACE : namespaceOf(spec);
  };
  const note = (ns: string, service: string): void => {
    let s = members.get(ns);
    if (s === undefined) members.set(ns, (s = new Set()));
    s.add(service);
  };
  for (const [name, s] of state.services) if (s.spec !== undefined) note(namespaceOf(s.spec), name);
  for (const a of state.assigns.values()) {
    const ns = nsOf(a.alloc.service, a.spec);
    ledger.add(ns, a.alloc.service, a.alloc.index, a.alloc.resources);
    note(ns, a.alloc.service);
  }
  for (const [id, st] of state.statuses) {
    if (st.state !== 'stopping' || st.stopping === undefined || state.assigns.has(id)) continue;
    ledger.add(nsOf(st.stopping.service), st.stopping.service, st.stopping.index, st.stopping.resources);
  }
  const out = new Map<string, QuotaUse & { services: string[] }>();
  for (const ns of new Set([...members.keys(), ...ledger.namespaces()])) out.set(ns, { ...ledger.usage(ns), services: [...(members.get(ns) ?? [])].sort() });
  return out;
}

/** A spec's update policy and disruption budget in force, and where each field comes from (for `service NAME`). */
export interface PolicyInForce {
  readonly update: UpdatePolicy;
  readonly maxUnavailable?: number;
  readonly from: Record<InheritableField, 'spec' | 'namespace' | 'built-in'>;
}

export function policyInForce(spec: ServiceSpec, policies: ReadonlyMap<string, NamespacePolicy> | undefined): PolicyInForce {
  const e = effectiveSpec(spec, policies);
  return { update: e.update, ...(e.maxUnavailable === undefined ? {} : { maxUnavailable: e.maxUnavailable }), from: defaultsSource(spec, policies) };
}
