/**
 * What the controller counts into the agent's metrics (src/api/metrics.ts) after each committed pass: placements,
 * instances left unplaced, plan steps finished, plans finished, application backplanes' failovers, and the time from
 * an instance found failed (or its host lost) to its replacement running healthy. Kept apart from controller.ts so
 * that the controller only hands over what it committed; everything here reads the pass's snapshot and plan.
 *
 * Bounded: one entry per service left unplaced, and one per replacement waiting to be healthy (at most
 * MAX_PENDING, none older than PENDING_MAX_AGE_MS). A new controller starts without them: a recovery that was in
 * flight when leadership moved is not measured.
 */
import type { Metrics } from '../api/metrics.js';
import type { AppApplied } from './apps.js';
import type { PlanStep } from './plan-types.js';
import type { PlanPassOutput } from './plans.js';
import type { SchedState } from './state.js';
import type { ClusterSnapshot } from './types.js';

const MAX_PENDING = 10_000;
const PENDING_MAX_AGE_MS = 6 * 3600_000;

export interface CommittedPass {
  readonly epoch: number;
  readonly out: PlanPassOutput;
  /** The state the pass planned over (what the store held before its commit). */
  readonly state: SchedState;
  readonly snapshot: ClusterSnapshot;
  readonly apps: readonly AppApplied[];
  readonly now: number;
}

export class ControllerMetrics {
  private epoch = -1;
  /** Services with instances no host can take, and how many. */
  private readonly unplaced = new Map<string, number>();
  /** Replacements of failed or lost instances not healthy yet: new alloc id -> when the trouble was found. */
  private readonly pending = new Map<string, { readonly since: number; readonly reason: 'lost' | 'failed'; readonly placedAt: number }>();

  constructor(private readonly metrics: Metrics) {}

  /** A pass ended: committed (ok) or failed; `seconds` it took. */
  pass(seconds: number, ok: boolean): void {
    this.metrics.controllerPass(seconds, ok);
  }

  committed(p: CommittedPass): void {
    const { out, state, snapshot, now } = p;
    if (p.epoch !== this.epoch) {
      // Led again after someone else did: what was pending then is that controller's business.
      this.epoch = p.epoch;
      this.pending.clear();
      this.unplaced.clear();
    }
    this.recoveries(state, now);

    // Placements (the commit skips one whose service has no target record: not placed).
    const placed = out.plan.place.filter((pl) => out.targets.has(pl.alloc.service));
    this.metrics.placed(placed.length);
    const allocs = new Map(snapshot.allocs.map((a) => [a.id, a]));
    const hosts = new Map(snapshot.hosts.map((h) => [h.name, h]));
    for (const pl of placed) {
      if (pl.reason !== 'lost' && pl.reason !== 'failed') continue;
      const prevId = pl.alloc.previous;
      const chained = prevId === undefined ? undefined : this.pending.get(prevId);
      let since = now;
      if (chained !== undefined) {
        // A replacement of a replacement that never became healthy: the trouble began with the first one.
        since = chained.since;
        if (prevId !== undefined) this.pending.delete(prevId);
      } else {
        const prev = prevId === undefined ? undefined : allocs.get(prevId);
        if (pl.reason === 'failed' && prev?.status !== undefined) since = prev.status.since;
        else if (pl.reason === 'lost' && prev !== undefined) {
          const h = hosts.get(prev.host);
          if (h !== undefined && !h.alive) since = snapshot.now - h.downForMs;
        }
      }
      this.track(pl.alloc.id, { since: Math.min(since, now), reason: chained?.reason ?? pl.reason, placedAt: now });
    }

    // Instances left unplaced: counted when a service's number of them grows.
    const seen = new Set<string>();
    let newly = 0;
    let total = 0;
    for (const i of out.plan.infeasible) {
      seen.add(i.service);
      const before = this.unplaced.get(i.service) ?? 0;
      if (i.unplaced > before) newly += i.unplaced - before;
      this.unplaced.set(i.service, i.unplaced);
      total += i.unplaced;
    }
    for (const svc of [...this.unplaced.keys()]) if (!seen.has(svc)) this.unplaced.delete(svc);
    this.metrics.unplaced(newly, total);

    // Steps that reached complete or error in this pass's plan records.
    for (const plan of out.write) {
      const before = state.plans.get(plan.service);
      const old = new Map<string, PlanStep['state']>();
      if (before?.id === plan.id) for (const ph of before.phases) for (const s of ph.steps) old.set(s.name, s.state);
      for (const ph of plan.phases) {
        for (const s of ph.steps) {
          if (s.state !== 'complete' && s.state !== 'error') continue;
          if (old.get(s.name) === s.state) continue;
          this.metrics.planStep(s.state === 'error' ? 'error' : s.forced === true ? 'forced' : 'complete');
        }
      }
    }
    for (const plan of out.finished) this.metrics.planFinished(plan.kind, plan.status);

    // Failovers: a backplane's lastFailover with a new target (or time) than the stored state had.
    for (const a of p.apps) {
      if (!a.changed) continue;
      const f = a.record.status?.lastFailover;
      if (f === undefined || f.from === undefined) continue;
      const before = state.appStates.get(a.record.name)?.status?.lastFailover;
      if (before !== undefined && before.at === f.at && before.to === f.to) continue;
      this.metrics.failover(a.record.kind);
    }
  }

  /** Replacements that are healthy now (or gone) leave `pending`; the healthy ones are observed. */
  private recoveries(state: SchedState, now: number): void {
    for (const [id, r] of this.pending) {
      const a = state.assigns.get(id);
      if (a === undefined) {
        // Stopped before it was healthy; its own replacement (if any) carries the time on (committed()).
        if (now - r.placedAt > 60_000) this.pending.delete(id);
        continue;
      }
      const st = state.statuses.get(id);
      if (st === undefined || st.host !== a.alloc.host) continue;
      const up = st.state === 'healthy' || (st.state === 'running' && a.spec.health === undefined);
      if (!up) continue;
      this.pending.delete(id);
      const at = Math.min(now, Math.max(r.since, st.since));
      this.metrics.recovered(r.reason, (at - r.since) / 1000);
    }
  }

  private track(id: string, r: { since: number; reason: 'lost' | 'failed'; placedAt: number }): void {
    if (this.pending.size >= MAX_PENDING) {
      const cutoff = r.placedAt - PENDING_MAX_AGE_MS;
      for (const [k, v] of this.pending) if (v.placedAt < cutoff) this.pending.delete(k);
      // Still full: the oldest goes (Map keeps insertion order).
      if (this.pending.size >= MAX_PENDING) {
        const oldest = this.pending.keys().next().value;
        if (oldest !== undefined) this.pending.delete(oldest);
      }
    }
    this.pending.set(id, r);
  }
}
