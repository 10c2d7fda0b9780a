/**
 * Placement: which host each new instance goes to. A pure function over a snapshot of hosts and the allocs already
 * assigned to them, shaped like Nomad's scheduler stack: a chain of feasibility checkers drops the hosts an instance
 * cannot go to (down, draining, label constraints, cpu, memory, distinct_hosts, max_per_host, anti-affinity, static
 * and dynamic ports), then a ranker picks among the rest (bin-packing by default, or spread; spread over a label;
 * a host the instance just failed on last). Ties go to the host whose name sorts first, so a plan is reproducible.
 *
 * Nothing is ever over-committed: every alloc in the input reserves its cpu, memory and ports on its host, and each
 * placement made here is added to the tallies before the next request is looked at, so a plan never double-books
 * what it placed itself. The tallies are flat typed arrays indexed by host and updated incrementally, so a request
 * costs one pass over the hosts its service can use at all (labels, liveness and drain are decided once per service):
 * 10,000 instances over 1,000 hosts stay well under a second (bench/placement.ts).
 *
 * When no host can take an instance, every host is counted under the first checker that rejected it (Nomad's
 * "constraint filtered" / "dimension exhausted" metrics), which gives the operator's one-line explanation:
 * "3 of 6 instances cannot be placed: memory short on 4 hosts, label zone=b matches no host".
 *
 * Before any host is looked at, the request's namespace quota (policy.ts) must have room for it: counted per instance
 * index over every alloc in the input (and those placed here), so a replacement takes over the share of the instance
 * it replaces and only new instances (or a bigger new version) need room. A refused request stays unplaced with
 * "namespace team-a quota: memory 1G of 1G used (raise it: ...)".
 */
import { randomBytes } from 'node:crypto';
import { namespaceOf, QuotaLedger, quotaReason, quotasOf, type QuotaDimension } from './policy.js';
import type { Alloc, ClusterSnapshot, Infeasible, LabelConstraint, Placement, ServiceSpec } from './types.js';

/** Makes the id of a new alloc: `<service>.<index>.<8 hex>` by default. Injectable so tests and benches are reproducible. */
export type AllocIdGenerator = (service: string, index: number) => string;

export const randomAllocId: AllocIdGenerator = (service, index) => `${service}.${index}.${randomBytes(4).toString('hex')}`;

/** What placement looks at: the snapshot's hosts and every alloc still assigned to one of them. */
export interface PlacementInput {
  readonly now: ClusterSnapshot['now'];
  readonly hosts: ClusterSnapshot['hosts'];
  /**
   * Every alloc still assigned to a host, whatever its state: each one reserves its cpu, memory and ports there
   * until its assignment is deleted (an alloc being stopped in the same plan still holds its port until its process
   * is gone, so it is counted too).
   */
  readonly allocs: ClusterSnapshot['allocs'];
  /**
   * Every service spec, so that anti-affinity declared by another service is honoured both ways (and so that each
   * alloc's namespace is known, for quotas).
   */
  readonly services?: ClusterSnapshot['services'];
  /** Namespace policies: their quotas are enforced. */
  readonly policies?: ClusterSnapshot['policies'];
}

export interface PlacementRequest {
  readonly spec: ServiceSpec;
  readonly index: number;
  readonly reason: Placement['reason'];
  /** The alloc this one replaces, recorded in the new alloc. */
  readonly previous?: string;
  /** Carried into the new alloc (the reconciler appends a reschedule's time). */
  readonly reschedules?: readonly number[];
  /** Ranked after every other feasible host (the host the instance just failed on), but still allowed. */
  readonly avoidHost?: string;
  /**
   * An alloc this one replaces whose process is gone (a failed instance): if the new alloc lands on the same host it
   * takes over the old one's reservation (cpu, memory, ports, its place under distinct_hosts), which is what lets a
   * crash-looping instance be restarted on the only host that can run it. Its host is ranked last.
   */
  readonly reuse?: Alloc;
}

export interface PlacementOptions {
  readonly newAllocId?: AllocIdGenerator;
  /**
   * Rank every request with a full pass over the hosts instead of the per-service heaps. Same result, slower: for
   * tests that check the fast path against the plain one.
   */
  readonly exhaustive?: boolean;
}

export interface PlacementResult {
  /** New allocs, in request order (each request that found a host). */
  readonly placed: readonly Alloc[];
  /** Requests no host could take, in request order. */
  readonly unplaced: readonly PlacementRequest[];
  /** One per service with unplaced requests. */
  readonly infeasible: readonly Infeasible[];
  /** E.g. a constraint on a label no host has (the spec is probably wrong, but it is not an error). */
  readonly warnings: readonly string[];
}

/** cpu is fractional: sums like 0.1 + 0.2 must not read as over 0.3. Memory is in bytes. */
const CPU_EPS = 1e-9;
const MEM_EPS = 1e-6;
/** Ranks hosts without the spread label after every host with it. */
const NO_SPREAD_VALUE = 0x3fffffff;

interface LabelIndex {
  /** Per host: the index of its value in `values`, or -1 without the label. */
  readonly ids: Int32Array;
  readonly values: string[];
}

/** What is decided once per service: the hosts it can use at all, and why the others were ruled out. */
interface ServiceCtx {
  readonly spec: ServiceSpec;
  /** Alive, not draining, labels match; ascending, i.e. in host-name order. */
  readonly hosts: Int32Array;
  /** Reason -> hosts, for the hosts not in `hosts`. */
  readonly staticReasons: Map<string, number>;
  /** Labels constraint reasons that no host in the snapshot satisfies, for the message. */
  readonly matchesNoHost: Set<string>;
  readonly statics: readonly number[];
  readonly dynamics: number;
  /** A static port the spec lists twice: no host can give it twice. */
  readonly duplicateStatic?: number;
  readonly perHostLimit: number;
  /** Services this one must not share a host with: its own anti_affinity and those that name it. */
  readonly anti: readonly string[];
  readonly spread?: LabelIndex;
  /** Instances per spread value (empty without spread). */
  readonly spreadCounts: Int32Array;
}

interface InfeasibleTally {
  readonly spec: ServiceSpec;
  unplaced: number;
  /** Hosts' reasons are counted once, at the first request no host could take (none when only the quota refused). */
  hostsExplained: boolean;
  hostsFiltered: Map<string, number>;
  matchesNoHost: ReadonlySet<string>;
  /** The quota's refusals: use and limit at the first, and what every refused request together needed. */
  quota?: { namespace: string; over: Map<QuotaDimension, { dim: QuotaDimension; used: number; limit: number; need: number }> };
}

export function constraintText(c: LabelConstraint): string {
  if (c.op === 'eq') return `label ${c.label}=${c.values[0] ?? ''}`;
  return `label ${c.label} ${c.op === 'in' ? 'in' : 'not in'} (${c.values.join(', ')})`;
}

export function constraintHolds(c: LabelConstraint, value: string | undefined): boolean {
  if (c.op === 'not_in') return value === undefined || !c.values.includes(value);
  if (value === undefined) return false;
  return c.op === 'eq' ? c.values[0] === value : c.values.includes(value);
}

const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;

/** "memory short on 4 hosts", "2 hosts draining", "label zone=b matches no host". */
function reasonPhrase(reason: string, n: number, matchesNoHost: ReadonlySet<string>): string {
  if (matchesNoHost.has(reason)) return `${reason} matches no host`;
  if (reason === 'down' || reason === 'draining') return `${plural(n, 'host')} ${reason}`;
  if (reason.startsWith('label ')) return `${reason} rules out ${plural(n, 'host')}`;
  return `${reason} on ${plural(n, 'host')}`;
}

export function infeasibleMessage(unplaced: number, wanted: number, hostsFiltered: ReadonlyMap<string, number>, matchesNoHost: ReadonlySet<string>, quota?: string): string {
  const parts = [...hostsFiltered]
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
    .map(([reason, n]) => reasonPhrase(reason, n, matchesNoHost));
  const what = `${unplaced} of ${plural(wanted, 'instance')} cannot be placed`;
  if (quota !== undefined) return `${what}: ${quota}${parts.length === 0 ? '' : `; ${parts.join(', ')}`}`;
  return `${what}: ${parts.length === 0 ? 'no hosts' : parts.join(', ')}`;
}

/**
 * The mutable state of one placement run: per-host capacity and usage, ports in use, instances per service.
 * Hosts are sorted by name, so a host's index order is its tie-break order.
 */
class Tallies {
  readonly n: number;
  readonly names: string[];
  readonly index = new Map<string, number>();
  readonly alive: Uint8Array;
  readonly draining: Uint8Array;
  readonly labels: Readonly<Record<string, string>>[];
  readonly cpuCap: Float64Array;
  readonly memCap: Float64Array;
  readonly invCpu: Float64Array;
  readonly invMem: Float64Array;
  readonly cpuUsed: Float64Array;
  readonly memUsed: Float64Array;
  /** port -> holders (reserved ports count as one holder); a Map so that releasing one holder never frees a shared port. */
  readonly ports: (Map<number, number> | undefined)[];
  readonly dynFrom: Int32Array;
  readonly dynTo: Int32Array;
  /** Ports of the dynamic range nobody holds. */
  readonly dynFree: Int32Array;
  /** No port below this in the dynamic range is free (ports only get taken while placing, except a reuse). */
  readonly dynCursor: Int32Array;
  /** service -> host index of each of its allocs (one entry per alloc), for building per-service counts lazily. */
  readonly allocHosts = new Map<string, number[]>();
  private readonly svcCounts = new Map<string, Int32Array>();
  private readonly labelIndexes = new Map<string, LabelIndex>();

  constructor(input: PlacementInput) {
    const hosts = [...input.hosts].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const n = hosts.length;
    this.n = n;
    this.names = hosts.map((h) => h.name);
    this.alive = new Uint8Array(n);
    this.draining = new Uint8Array(n);
    this.labels = hosts.map((h) => h.labels);
    this.cpuCap = new Float64Array(n);
    this.memCap = new Float64Array(n);
    this.invCpu = new Float64Array(n);
    this.invMem = new Float64Array(n);
    this.cpuUsed = new Float64Array(n);
    this.memUsed = new Float64Array(n);
    this.ports = new Array<Map<number, number> | undefined>(n);
    this.dynFrom = new Int32Array(n);
    this.dynTo = new Int32Array(n);
    this.dynFree = new Int32Array(n);
    this.dynCursor = new Int32Array(n);
    hosts.forEach((h, i) => {
      // A host listed twice keeps its first entry: never let a second record double its capacity.
      if (!this.index.has(h.name)) this.index.set(h.name, i);
      this.alive[i] = h.alive ? 1 : 0;
      this.draining[i] = h.draining ? 1 : 0;
      this.cpuCap[i] = h.capacity.cpu;
      this.memCap[i] = h.capacity.memory;
      // A zero capacity adds nothing to utilisation; only zero-sized requests fit there anyway.
      this.invCpu[i] = h.capacity.cpu > 0 ? 1 / h.capacity.cpu : 0;
      this.invMem[i] = h.capacity.memory > 0 ? 1 / h.capacity.memory : 0;
      this.dynFrom[i] = h.dynamicPorts.from;
      this.dynTo[i] = h.dynamicPorts.to;
      this.dynFree[i] = Math.max(0, h.dynamicPorts.to - h.dynamicPorts.from + 1);
      this.dynCursor[i] = h.dynamicPorts.from;
      for (const p of h.reservedPorts) this.holdPort(i, p);
    });
    for (const a of input.allocs) {
      const h = this.index.get(a.host);
      if (h === undefined) continue;
      this.take(h, a);
    }
  }

  /** Adds an alloc's reservation to its host. */
  take(h: number, a: Alloc): void {
    this.cpuUsed[h]! += a.resources.cpu;
    this.memUsed[h]! += a.resources.memory;
    for (const p of Object.values(a.ports)) this.holdPort(h, p);
    let list = this.allocHosts.get(a.service);
    if (list === undefined) this.allocHosts.set(a.service, (list = []));
    list.push(h);
    const counts = this.svcCounts.get(a.service);
    if (counts !== undefined) counts[h]!++;
  }

  /** Removes an alloc's reservation from its host (a failed alloc whose replacement takes it over). */
  release(h: number, a: Alloc): void {
    this.cpuUsed[h]! -= a.resources.cpu;
    this.memUsed[h]! -= a.resources.memory;
    for (const p of Object.values(a.ports)) this.dropPort(h, p);
    const list = this.allocHosts.get(a.service);
    const at = list?.indexOf(h) ?? -1;
    if (list !== undefined && at >= 0) list.splice(at, 1);
    const counts = this.svcCounts.get(a.service);
    if (counts !== undefined) counts[h]!--;
  }

  private inDynRange(h: number, p: number): boolean {
    return p >= this.dynFrom[h]! && p <= this.dynTo[h]!;
  }

  holdPort(h: number, p: number): void {
    let m = this.ports[h];
    if (m === undefined) this.ports[h] = m = new Map();
    const c = m.get(p) ?? 0;
    m.set(p, c + 1);
    if (c === 0 && this.inDynRange(h, p)) this.dynFree[h]!--;
  }

  private dropPort(h: number, p: number): void {
    const m = this.ports[h];
    const c = m?.get(p) ?? 0;
    if (m === undefined || c === 0) return;
    if (c > 1) {
      m.set(p, c - 1);
      return;
    }
    m.delete(p);
    if (this.inDynRange(h, p)) {
      this.dynFree[h]!++;
      if (p < this.dynCursor[h]!) this.dynCursor[h] = p;
    }
  }

  portHeld(h: number, p: number): boolean {
    return (this.ports[h]?.get(p) ?? 0) > 0;
  }

  /** The lowest free port of the host's dynamic range; the caller has checked dynFree. */
  nextDynamicPort(h: number): number {
    let p = this.dynCursor[h]!;
    while (this.portHeld(h, p)) p++;
    this.dynCursor[h] = p + 1;
    return p;
  }

  /** Instances of a service per host (every alloc assigned to the host, whatever its state). */
  countsOf(service: string): Int32Array {
    let c = this.svcCounts.get(service);
    if (c === undefined) {
      c = new Int32Array(this.n);
      for (const h of this.allocHosts.get(service) ?? []) c[h]!++;
      this.svcCounts.set(service, c);
    }
    return c;
  }

  labelIndex(label: string): LabelIndex {
    let li = this.labelIndexes.get(label);
    if (li === undefined) {
      const values: string[] = [];
      const byValue = new Map<string, number>();
      const ids = new Int32Array(this.n).fill(-1);
      for (let h = 0; h < this.n; h++) {
        const v = this.labels[h]![label];
        if (v === undefined) continue;
        let id = byValue.get(v);
        if (id === undefined) {
          id = values.length;
          values.push(v);
          byValue.set(v, id);
        }
        ids[h] = id;
      }
      li = { ids, values };
      this.labelIndexes.set(label, li);
    }
    return li;
  }
}

function bump(m: Map<string, number>, key: string, by = 1): void {
  m.set(key, (m.get(key) ?? 0) + by);
}

/**
 * Places each request on a host, in request order, or explains why none can take it. Requests of one service should
 * share one spec object version (the reconciler's are always the service's current spec).
 */
export function placeInstances(input: PlacementInput, requests: readonly PlacementRequest[], options: PlacementOptions = {}): PlacementResult {
  const newAllocId = options.newAllocId ?? randomAllocId;
  const t = new Tallies(input);
  const warnings: string[] = [];
  const usedIds = new Set(input.allocs.map((a) => a.id));

  // Anti-affinity holds both ways: "a never next to b" also keeps b off a's hosts, or placing b later would break a.
  const reverseAnti = new Map<string, Set<string>>();
  const noteAnti = (spec: ServiceSpec): void => {
    for (const other of spec.placement.antiAffinity) {
      let s = reverseAnti.get(other);
      if (s === undefined) reverseAnti.set(other, (s = new Set()));
      s.add(spec.name);
    }
  };
  for (const s of input.services ?? []) noteAnti(s);
  for (const r of requests) noteAnti(r.spec);

  const labelsAnyHostHas = new Set<string>();
  for (const labels of t.labels) for (const k of Object.keys(labels)) labelsAnyHostHas.add(k);

  // Quotas: each alloc counts in its service's namespace (the requests' specs are the ones in force).
  const quotas = quotasOf(input.policies);
  const ledger = quotas.size === 0 ? undefined : new QuotaLedger(quotas);
  if (ledger !== undefined) {
    const nsOf = new Map<string, string>();
    for (const s of input.services ?? []) nsOf.set(s.name, namespaceOf(s));
    for (const r of requests) nsOf.set(r.spec.name, namespaceOf(r.spec));
    for (const a of input.allocs) {
      const ns = nsOf.get(a.service);
      if (ns !== undefined) ledger.add(ns, a.service, a.index, a.resources);
    }
  }

  const ctxs = new Map<string, ServiceCtx>();
  const contextOf = (spec: ServiceSpec): ServiceCtx => {
    const known = ctxs.get(spec.name);
    if (known !== undefined && known.spec === spec) return known;
    const staticReasons = new Map<string, number>();
    const matchesNoHost = new Set<string>();
    const constraints = spec.placement.constraints;
    const texts = constraints.map(constraintText);
    if (known === undefined) {
      for (const c of constraints)
        if (!labelsAnyHostHas.has(c.label)) warnings.push(`service ${spec.name}: constraint on label "${c.label}", which no host has`);
    }
    constraints.forEach((c, i) => {
      let any = false;
      for (let h = 0; h < t.n && !any; h++) any = constraintHolds(c, t.labels[h]![c.label]);
      if (!any) matchesNoHost.add(texts[i]!);
    });
    const usable: number[] = [];
    for (let h = 0; h < t.n; h++) {
      if (t.alive[h] === 0) {
        bump(staticReasons, 'down');
        continue;
      }
      if (t.draining[h] === 1) {
        bump(staticReasons, 'draining');
        continue;
      }
      const labels = t.labels[h]!;
      const failed = constraints.findIndex((c) => !constraintHolds(c, labels[c.label]));
      if (failed >= 0) {
        bump(staticReasons, texts[failed]!);
        continue;
      }
      usable.push(h);
    }
    const statics: number[] = [];
    let dynamics = 0;
    let duplicateStatic: number | undefined;
    for (const p of spec.ports) {
      if (p.static === undefined) dynamics++;
      else if (statics.includes(p.static)) duplicateStatic = p.static;
      else statics.push(p.static);
    }
    const limits = [spec.placement.distinctHosts ? 1 : Infinity, spec.placement.maxPerHost ?? Infinity];
    const anti = new Set<string>(spec.placement.antiAffinity);
    for (const s of reverseAnti.get(spec.name) ?? []) anti.add(s);
    // Nothing can be "anti" itself: distinct_hosts and max_per_host say how instances of one service share a host.
    anti.delete(spec.name);
    const spread = spec.placement.spread === undefined ? undefined : t.labelIndex(spec.placement.spread);
    let spreadCounts = new Int32Array(0);
    if (spread !== undefined) {
      spreadCounts = new Int32Array(spread.values.length);
      // Instances on dead hosts are about to be replaced, so they do not hold their label value's share.
      for (const h of t.allocHosts.get(spec.name) ?? []) if (t.alive[h] === 1 && spread.ids[h]! >= 0) spreadCounts[spread.ids[h]!]!++;
    }
    const ctx: ServiceCtx = {
      spec,
      hosts: Int32Array.from(usable),
      staticReasons,
      matchesNoHost,
      statics,
      dynamics,
      ...(duplicateStatic === undefined ? {} : { duplicateStatic }),
      perHostLimit: Math.min(...limits),
      anti: [...anti].sort(),
      ...(spread === undefined ? {} : { spread }),
      spreadCounts,
    };
    ctxs.set(spec.name, ctx);
    return ctx;
  };

  /** The dynamic checkers in order; the first that rejects the host names the reason, undefined = feasible. */
  const rejection = (ctx: ServiceCtx, own: Int32Array, antiCounts: readonly Int32Array[], h: number): string | undefined => {
    const { spec } = ctx;
    if (t.cpuUsed[h]! + spec.resources.cpu > t.cpuCap[h]! + CPU_EPS) return 'cpu short';
    if (t.memUsed[h]! + spec.resources.memory > t.memCap[h]! + MEM_EPS) return 'memory short';
    if (own[h]! >= ctx.perHostLimit) return spec.placement.distinctHosts && own[h]! >= 1 ? 'distinct_hosts' : `max_per_host ${ctx.perHostLimit}`;
    for (let i = 0; i < antiCounts.length; i++) if (antiCounts[i]![h]! > 0) return `anti_affinity with ${ctx.anti[i]!}`;
    if (ctx.duplicateStatic !== undefined) return `port ${ctx.duplicateStatic} listed twice`;
    for (const p of ctx.statics) if (t.portHeld(h, p)) return `port ${p} in use`;
    if (ctx.dynamics > 0 && t.dynFree[h]! - staticsInDynRange(t, ctx, h) < ctx.dynamics) return 'no free dynamic port';
    return undefined;
  };

  const placed: Alloc[] = [];
  const unplaced: PlacementRequest[] = [];
  const tallies = new Map<string, InfeasibleTally>();
  // Usage only grows while placing, so once an instance of a service found no host, the next one of the same spec
  // cannot either (Nomad coalesces these failures the same way): skip the scan and count it as unplaced.
  const exhausted = new Set<string>();
  /** Bumped on every change to the tallies: a run's heaps are only valid at the stamp they were last updated at. */
  let stamp = 0;
  let run: Run | undefined;

  const tallyOf = (spec: ServiceSpec): InfeasibleTally => {
    let tally = tallies.get(spec.name);
    if (tally === undefined) tallies.set(spec.name, (tally = { spec, unplaced: 0, hostsExplained: false, hostsFiltered: new Map(), matchesNoHost: new Set() }));
    return tally;
  };

  for (const req of requests) {
    const ctx = contextOf(req.spec);
    const { spec, spread, spreadCounts } = ctx;
    const cand = ctx.hosts;
    const reuseHost = req.reuse === undefined ? undefined : t.index.get(req.reuse.host);
    const ns = namespaceOf(spec);
    const refusal = ledger?.refusal(ns, spec.name, req.index, spec.resources);
    if (refusal !== undefined) {
      const tally = tallyOf(spec);
      tally.quota ??= { namespace: ns, over: new Map() };
      for (const o of refusal.over) {
        const known = tally.quota.over.get(o.dim);
        if (known === undefined) tally.quota.over.set(o.dim, { ...o });
        else known.need += o.need;
      }
      tally.unplaced++;
      unplaced.push(req);
      continue;
    }
    if (req.reuse === undefined && exhausted.has(spec.name)) {
      unplaced.push(req);
      tallies.get(spec.name)!.unplaced++;
      continue;
    }
    // A failed alloc's process is gone: for this request its reservation is free (taken back below if unused).
    if (req.reuse !== undefined && reuseHost !== undefined) {
      releaseForReuse(t, ctx, reuseHost, req.reuse);
      stamp++;
    }

    const own = t.countsOf(spec.name);
    const antiCounts = ctx.anti.map((s) => t.countsOf(s));
    const avoid = req.avoidHost !== undefined ? (t.index.get(req.avoidHost) ?? -1) : (reuseHost ?? -1);
    let best = -1;
    if (ctx.duplicateStatic !== undefined) best = -1;
    else if (avoid >= 0 || options.exhaustive === true) best = bestHost(t, ctx, own, antiCounts, avoid);
    else {
      // Consecutive requests of one service, with nothing else placed in between, reuse the heaps of the last one.
      if (run === undefined || run.ctx !== ctx || run.stamp !== stamp) run = buildRun(t, ctx, own, stamp);
      best = run.take(t, own, antiCounts);
    }

    if (best < 0) {
      const tally = tallyOf(spec);
      if (!tally.hostsExplained) {
        // The first unplaced instance of a service explains it: count every host under its first rejection.
        const hostsFiltered = new Map(ctx.staticReasons);
        for (let k = 0; k < cand.length; k++) {
          const reason = rejection(ctx, own, antiCounts, cand[k]!);
          // Unreachable while the checkers above and `rejection` agree; kept so a disagreement shows in the message.
          bump(hostsFiltered, reason ?? 'not ranked');
        }
        tally.hostsExplained = true;
        tally.hostsFiltered = hostsFiltered;
        tally.matchesNoHost = ctx.matchesNoHost;
      }
      tally.unplaced++;
      unplaced.push(req);
      if (req.reuse !== undefined && reuseHost !== undefined) {
        restoreAfterReuse(t, ctx, reuseHost, req.reuse);
        stamp++;
      } else exhausted.add(spec.name);
      continue;
    }

    if (req.reuse !== undefined && reuseHost !== undefined) {
      // Usage went down somewhere when it stays released: an instance that found no host before might now.
      if (best !== reuseHost) restoreAfterReuse(t, ctx, reuseHost, req.reuse);
      else exhausted.clear();
      stamp++;
    }
    const ports: Record<string, number> = {};
    for (const p of spec.ports) {
      if (p.static === undefined) continue;
      ports[p.name] = p.static;
      t.holdPort(best, p.static);
    }
    for (const p of spec.ports) {
      if (p.static !== undefined) continue;
      const port = t.nextDynamicPort(best);
      ports[p.name] = port;
      t.holdPort(best, port);
    }
    let id = newAllocId(spec.name, req.index);
    for (let tries = 0; usedIds.has(id); tries++) {
      if (tries >= 8) throw new Error(`placement: alloc id generator keeps returning ids in use (${id})`);
      id = newAllocId(spec.name, req.index);
    }
    usedIds.add(id);
    const alloc: Alloc = {
      id,
      service: spec.name,
      index: req.index,
      version: spec.version,
      host: t.names[best]!,
      resources: spec.resources,
      ports,
      createdAt: input.now,
      ...(req.previous === undefined ? {} : { previous: req.previous }),
      reschedules: req.reschedules ?? [],
    };
    // Ports were held above; take() holds them again, so drop that second hold by taking without ports.
    t.take(best, { ...alloc, ports: {} });
    ledger?.add(ns, spec.name, req.index, spec.resources);
    stamp++;
    // The run's heaps stay valid: only `best` changed, and take() has just given it back its new score.
    if (run !== undefined && run.ctx === ctx && run.picked === best) {
      run.putBack(t, own, best);
      run.stamp = stamp;
    }
    if (spread !== undefined && spread.ids[best]! >= 0) spreadCounts[spread.ids[best]!]!++;
    placed.push(alloc);
  }

  const infeasible: Infeasible[] = [...tallies.values()].map((x) => {
    const quota = x.quota === undefined ? undefined : quotaReason(x.quota.namespace, [...x.quota.over.values()]);
    return {
      service: x.spec.name,
      wanted: x.spec.count,
      unplaced: x.unplaced,
      hostsFiltered: Object.fromEntries(x.hostsFiltered),
      message: infeasibleMessage(x.unplaced, x.spec.count, x.hostsFiltered, x.matchesNoHost, quota),
      ...(quota === undefined ? {} : { quota }),
    };
  });
  return { placed, unplaced, infeasible, warnings };
}

/**
 * The hot loop: one pass over the hosts the service can use at all, checkers then ranker, on flat arrays only
 * (a small function of its own so that V8 optimises it and keeps its numbers unboxed). Returns the host index, or -1.
 * Rank: not the avoided host, then the least-used spread value, then the score; equal = the earlier name.
 */
function bestHost(t: Tallies, ctx: ServiceCtx, own: Int32Array, antiCounts: readonly Int32Array[], avoid: number): number {
  const { spec, statics, dynamics, perHostLimit, spread, spreadCounts } = ctx;
  const cpu = spec.resources.cpu;
  const mem = spec.resources.memory;
  const sign = spec.placement.strategy === 'spread' ? -1 : 1;
  // Nomad's job anti-affinity: each instance already on a host costs 1/count of a full host's score, so small
  // instances spread over hosts (one host's loss costs less) while big ones still pack.
  const collision = 1 / Math.max(1, spec.count);
  const { cpuUsed, memUsed, cpuCap, memCap, invCpu, invMem, dynFree } = t;
  const spreadIds = spread?.ids;
  const cand = ctx.hosts;
  const nAnti = antiCounts.length;
  const nStatic = statics.length;
  let best = -1;
  let bestAvoid = 2;
  let bestSpread = 0;
  let bestScore = -Infinity;
  for (let k = 0; k < cand.length; k++) {
    const h = cand[k]!;
    const cu = cpuUsed[h]! + cpu;
    if (cu > cpuCap[h]! + CPU_EPS) continue;
    const mu = memUsed[h]! + mem;
    if (mu > memCap[h]! + MEM_EPS) continue;
    const c = own[h]!;
    if (c >= perHostLimit) continue;
    let ok = true;
    for (let i = 0; i < nAnti && ok; i++) ok = antiCounts[i]![h] === 0;
    for (let i = 0; i < nStatic && ok; i++) ok = !t.portHeld(h, statics[i]!);
    if (!ok) continue;
    if (dynamics > 0 && dynFree[h]! - (nStatic > 0 ? staticsInDynRange(t, ctx, h) : 0) < dynamics) continue;
    const av = h === avoid ? 1 : 0;
    if (av > bestAvoid) continue;
    let sv = 0;
    if (spreadIds !== undefined) {
      const id = spreadIds[h]!;
      sv = id < 0 ? NO_SPREAD_VALUE : spreadCounts[id]!;
    }
    const score = sign * (cu * invCpu[h]! + mu * invMem[h]!) * 0.5 - c * collision;
    if (av === bestAvoid && (sv > bestSpread || (sv === bestSpread && score <= bestScore))) continue;
    best = h;
    bestAvoid = av;
    bestSpread = sv;
    bestScore = score;
  }
  return best;
}

/** Static ports of the request that fall in the host's dynamic range: they use up free dynamic ports too. */
function staticsInDynRange(t: Tallies, ctx: ServiceCtx, h: number): number {
  let k = 0;
  for (const p of ctx.statics) if (p >= t.dynFrom[h]! && p <= t.dynTo[h]!) k++;
  return k;
}

/**
 * Hosts ordered by score (highest first, then the earlier name): a binary heap on flat arrays. Nomad avoids scoring
 * every node by scoring a random few (log2 n); that is neither deterministic nor the best fit, so here the hosts a
 * service can use are kept in heaps while its instances are placed one after another, and a placement costs a pop
 * and a push instead of a pass over every host.
 */
class HostHeap {
  private readonly hosts: Int32Array;
  private readonly scores: Float64Array;
  size = 0;

  constructor(capacity: number) {
    this.hosts = new Int32Array(capacity);
    this.scores = new Float64Array(capacity);
  }

  get topHost(): number {
    return this.hosts[0]!;
  }

  get topScore(): number {
    return this.scores[0]!;
  }

  private before(i: number, j: number): boolean {
    const si = this.scores[i]!;
    const sj = this.scores[j]!;
    return si > sj || (si === sj && this.hosts[i]! < this.hosts[j]!);
  }

  private swap(i: number, j: number): void {
    const h = this.hosts[i]!;
    this.hosts[i] = this.hosts[j]!;
    this.hosts[j] = h;
    const s = this.scores[i]!;
    this.scores[i] = this.scores[j]!;
    this.scores[j] = s;
  }

  private down(i: number): void {
    for (;;) {
      const l = 2 * i + 1;
      if (l >= this.size) return;
      const r = l + 1;
      const c = r < this.size && this.before(r, l) ? r : l;
      if (!this.before(c, i)) return;
      this.swap(c, i);
      i = c;
    }
  }

  /** Appends without ordering; call heapify() once after the last. */
  append(host: number, score: number): void {
    this.hosts[this.size] = host;
    this.scores[this.size] = score;
    this.size++;
  }

  heapify(): void {
    for (let i = (this.size >> 1) - 1; i >= 0; i--) this.down(i);
  }

  push(host: number, score: number): void {
    let i = this.size++;
    this.hosts[i] = host;
    this.scores[i] = score;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(i, p)) return;
      this.swap(i, p);
      i = p;
    }
  }

  pop(): void {
    this.size--;
    if (this.size === 0) return;
    this.hosts[0] = this.hosts[this.size]!;
    this.scores[0] = this.scores[this.size]!;
    this.down(0);
  }
}

/** The same score as bestHost() computes inline, to the bit: both paths must rank alike. */
function scoreOf(t: Tallies, ctx: ServiceCtx, own: Int32Array, h: number): number {
  const { spec } = ctx;
  const sign = spec.placement.strategy === 'spread' ? -1 : 1;
  const collision = 1 / Math.max(1, spec.count);
  const cu = t.cpuUsed[h]! + spec.resources.cpu;
  const mu = t.memUsed[h]! + spec.resources.memory;
  return sign * (cu * t.invCpu[h]! + mu * t.invMem[h]!) * 0.5 - own[h]! * collision;
}

function fits(t: Tallies, ctx: ServiceCtx, own: Int32Array, antiCounts: readonly Int32Array[], h: number): boolean {
  const { spec, statics } = ctx;
  if (t.cpuUsed[h]! + spec.resources.cpu > t.cpuCap[h]! + CPU_EPS) return false;
  if (t.memUsed[h]! + spec.resources.memory > t.memCap[h]! + MEM_EPS) return false;
  if (own[h]! >= ctx.perHostLimit) return false;
  for (const a of antiCounts) if (a[h] !== 0) return false;
  for (const p of statics) if (t.portHeld(h, p)) return false;
  if (ctx.dynamics > 0 && t.dynFree[h]! - (statics.length > 0 ? staticsInDynRange(t, ctx, h) : 0) < ctx.dynamics) return false;
  return true;
}

/**
 * The heaps of one service while its instances are placed one after another: one per value of its spread label (and
 * one for hosts without it), or a single one. Placing on a host changes that host's score and feasibility only (its
 * usage, ports, instances of this service) and a spread value's count, which is read live; and while only this
 * service places, a host that does not fit never fits again, so it is dropped for good when it reaches the top.
 */
class Run {
  stamp: number;
  /** The host the last take() returned, popped from `pickedGroup` until putBack(). */
  picked = -1;
  private pickedGroup = -1;
  private readonly heaps: HostHeap[] = [];
  /** Per heap: its spread value id, -1 for the hosts without the label (or the only heap without spread). */
  private readonly valueOf: number[] = [];
  private readonly groupOfHost: Int32Array;

  constructor(
    readonly ctx: ServiceCtx,
    t: Tallies,
    own: Int32Array,
    stamp: number,
  ) {
    this.stamp = stamp;
    this.groupOfHost = new Int32Array(t.n).fill(-1);
    const ids = ctx.spread?.ids;
    const groups = ids === undefined ? 1 : ctx.spread!.values.length + 1;
    const sizes = new Int32Array(groups);
    const groupOf = (h: number): number => (ids === undefined ? 0 : ids[h]! < 0 ? groups - 1 : ids[h]!);
    for (const h of ctx.hosts) sizes[groupOf(h)]!++;
    for (let g = 0; g < groups; g++) {
      this.heaps.push(new HostHeap(sizes[g]!));
      this.valueOf.push(ids === undefined || g === groups - 1 ? -1 : g);
    }
    for (const h of ctx.hosts) {
      const g = groupOf(h);
      this.groupOfHost[h] = g;
      this.heaps[g]!.append(h, scoreOf(t, ctx, own, h));
    }
    for (const heap of this.heaps) heap.heapify();
  }

  /** The best host that fits (popped; give it back with putBack()), or -1. */
  take(t: Tallies, own: Int32Array, antiCounts: readonly Int32Array[]): number {
    const { ctx } = this;
    let best = -1;
    let bestGroup = -1;
    let bestSpread = 0;
    let bestScore = -Infinity;
    for (let g = 0; g < this.heaps.length; g++) {
      const heap = this.heaps[g]!;
      while (heap.size > 0 && !fits(t, ctx, own, antiCounts, heap.topHost)) heap.pop();
      if (heap.size === 0) continue;
      const v = this.valueOf[g]!;
      const sv = ctx.spread === undefined ? 0 : v < 0 ? NO_SPREAD_VALUE : ctx.spreadCounts[v]!;
      const h = heap.topHost;
      const score = heap.topScore;
      if (best >= 0 && (sv > bestSpread || (sv === bestSpread && (score < bestScore || (score === bestScore && h > best))))) continue;
      best = h;
      bestGroup = g;
      bestSpread = sv;
      bestScore = score;
    }
    if (best >= 0) this.heaps[bestGroup]!.pop();
    this.picked = best;
    this.pickedGroup = bestGroup;
    return best;
  }

  /** Puts the host take() returned back with its score after the placement. */
  putBack(t: Tallies, own: Int32Array, h: number): void {
    if (h !== this.picked) return;
    this.heaps[this.pickedGroup]!.push(h, scoreOf(t, this.ctx, own, h));
    this.picked = -1;
  }
}

function buildRun(t: Tallies, ctx: ServiceCtx, own: Int32Array, stamp: number): Run {
  return new Run(ctx, t, own, stamp);
}

function releaseForReuse(t: Tallies, ctx: ServiceCtx, h: number, a: Alloc): void {
  t.release(h, a);
  if (ctx.spread !== undefined && a.service === ctx.spec.name && t.alive[h] === 1 && ctx.spread.ids[h]! >= 0) ctx.spreadCounts[ctx.spread.ids[h]!]!--;
}

function restoreAfterReuse(t: Tallies, ctx: ServiceCtx, h: number, a: Alloc): void {
  t.take(h, a);
  if (ctx.spread !== undefined && a.service === ctx.spec.name && t.alive[h] === 1 && ctx.spread.ids[h]! >= 0) ctx.spreadCounts[ctx.spread.ids[h]!]!++;
}
