/**
 * Plans: every change to a service (deploy, update, rollback, scale, recovery, drain, removal) as a tree of phases
 * and steps with a strategy, kept in the store (`sched/plan/<service>`), advanced by the controller with fenced
 * writes and steered by the operator (`backplane plan`, `backplane rollout ...`). dcos-commons' Plan -> Phase -> Step,
 * with Nomad's deployment semantics for updates (canaries, promotion, healthy deadline, automatic revert).
 *
 * A plan record is plain data: the controller rebuilds every step's state from the allocs it sees on each pass
 * (plans.ts), and the record keeps only what the allocs cannot say — the operator's steering (paused, promoted,
 * forced and restarted steps), errors that must stick until the operator acts, deadlines' anchors and the history.
 * A new controller reads it and carries on exactly where the old one stopped.
 */

/**
 * deploy: first placement of a service; update: a new version; rollback: back to the last healthy version (after a
 * failed update or an abort); scale: count changed; config: an edit that changes neither (update policy, hooks);
 * recover: instances replaced after a host was lost or an instance failed; drain: instances moved off draining
 * hosts; remove: the service was removed.
 */
export type PlanKind = 'deploy' | 'update' | 'rollback' | 'scale' | 'config' | 'recover' | 'drain' | 'remove';

/**
 * running: advancing; paused: by the operator (no new step starts, healing goes on); waiting: for the operator
 * (promote, or a failed step without automatic revert); complete: every step done; failed: gave up (no earlier
 * healthy version, or a rollback failed); rolled-back: failed, and a rollback plan took over; superseded: a newer
 * spec took over; aborted: by the operator.
 */
export type PlanStatus = 'running' | 'paused' | 'waiting' | 'complete' | 'failed' | 'rolled-back' | 'superseded' | 'aborted';

export const ACTIVE_STATUSES: readonly PlanStatus[] = ['running', 'paused', 'waiting'];

/**
 * pending: not started (why says what it waits for); prepared: the old instance is being stopped (its before-stop
 * hook runs, or its process is going); starting: the new instance is placed, not up yet; waiting-health: up, not
 * healthy for min-healthy-time yet; complete; waiting-operator: a healthy canary waiting for promote; error: the step
 * failed (deadline, crash loop, hook), and stays failed until the operator restarts or force-completes it.
 */
export type StepState = 'pending' | 'prepared' | 'starting' | 'waiting-health' | 'complete' | 'waiting-operator' | 'error';

/** replace: old version -> new; place: a new instance; stop: an instance goes; move: off a draining or lost host. */
export type StepAction = 'replace' | 'place' | 'stop' | 'move';

export interface PlanStep {
  /** The instance it is about: `<service>.<index>`; unique in its plan. */
  readonly name: string;
  readonly index: number;
  readonly action: StepAction;
  readonly state: StepState;
  /** Why it is in that state, for people: "healthy for 4s of 10s", "waiting for promote", "host b draining". */
  readonly why?: string;
  /** Wall-clock ms the state began. */
  readonly since: number;
  /** The alloc it replaces or stops. */
  readonly from?: { readonly allocId: string; readonly host: string; readonly version: string };
  /** The alloc it placed. */
  readonly to?: { readonly allocId: string; readonly host: string };
  /** A failed hook's output, or the failed instance's last message. */
  readonly output?: string;
  /** Force-completed by the operator. */
  readonly forced?: boolean;
}

export interface PlanPhase {
  /** canary, rollout, deploy, rollback, scale, recover, drain, remove. */
  readonly name: string;
  /** How its steps run, for people: "2 at a time, stop first", "all at once", "canary: waits for promote". */
  readonly strategy: string;
  readonly steps: readonly PlanStep[];
}

/** An operator-signed spec record, verbatim (what assignments carry), with what it is. */
export interface SpecRef {
  readonly version: string;
  /** The signed `services/<name>` body and its signer (an operator host). */
  readonly record: string;
  readonly by: string;
  readonly deployedAt: string;
}

/** The rollout policy the plan runs with, resolved (count-dependent defaults applied) when it was made. */
export interface PlanStrategy {
  readonly canary: number;
  /** Effective parallelism: >= 1. */
  readonly maxParallel: number;
  readonly startFirst: boolean;
  readonly autoPromote: boolean;
  readonly autoRevert: boolean;
  readonly minHealthyMs: number;
  readonly healthyDeadlineMs: number;
  readonly progressDeadlineMs: number;
  readonly maxUnavailable: number;
}

export interface PlanLogEntry {
  readonly at: number;
  readonly message: string;
}

/** The outcome of an operator command, kept in the plan it steered so `backplane rollout ...` can report it. */
export interface CommandResult {
  readonly id: string;
  readonly action: PlanCommandAction;
  readonly ok: boolean;
  readonly message: string;
  readonly at: number;
}

export interface ServicePlan {
  /** `<service>-<seq>`. */
  readonly id: string;
  /** Increasing per service; history keys sort by it. */
  readonly seq: number;
  readonly service: string;
  readonly kind: PlanKind;
  readonly fromVersion?: string;
  readonly toVersion: string;
  readonly fromCount?: number;
  readonly toCount: number;
  /** The spec this plan takes the service to (for a rollback: the last healthy version's record). */
  readonly target: SpecRef;
  /**
   * The operator's spec record this plan answers (`services/<name>` deployedAt): a record with another deployedAt is
   * a new change and supersedes this plan. A rollback keeps the failed update's trigger.
   */
  readonly trigger: { readonly deployedAt: string; readonly version: string };
  /** The last version whose plan completed healthy: where a rollback goes. */
  readonly stable?: SpecRef;
  readonly strategy: PlanStrategy;
  readonly status: PlanStatus;
  /** Why it has that status: "web.2 not healthy within 30s (unhealthy: HTTP 500); rolled back to v1". */
  readonly why?: string;
  readonly paused: boolean;
  /** Canaries: 'no' until promoted; 'requested' while before-promote hooks run; 'done'. */
  readonly promote: 'no' | 'requested' | 'done';
  readonly createdAt: number;
  readonly updatedAt: number;
  /** The last time a step completed (or the plan started): the progress deadline counts from here. */
  readonly lastProgressAt: number;
  readonly finishedAt?: number;
  /**
   * When a step failure (or the progress deadline) stopped the plan and it waits for the operator (status
   * 'waiting'); cleared when the operator restarts or force-completes a step. Unset while it waits for promote.
   */
  readonly failedAt?: number;
  readonly phases: readonly PlanPhase[];
  /** Steps the operator force-completed. */
  readonly forced: readonly string[];
  /** Steps the operator restarted: step name -> the restart's nonce (a wall-clock ms), so a hook re-runs. */
  readonly restarted: Readonly<Record<string, number>>;
  /** Decisions, newest last (at most 50): started, paused by, promoted, failed because, rolled back to. */
  readonly log: readonly PlanLogEntry[];
  /** The last operator commands applied to it (at most 20). */
  readonly commands: readonly CommandResult[];
}

export type PlanCommandAction = 'pause' | 'resume' | 'promote' | 'abort' | 'restart-step' | 'force-complete';

/** `sched/cmd/<service>/<id>`: signed by an operator host; the controller applies it once and deletes it. */
export interface PlanCommand {
  /** Random hex; names the key. */
  readonly id: string;
  readonly service: string;
  readonly action: PlanCommandAction;
  /** The plan the operator saw: a command for a plan that is no longer current is refused. */
  readonly planId: string;
  readonly step?: string;
  /** ISO time, for the log. */
  readonly at: string;
  /** The operator host that signed it (from the envelope, checked). */
  readonly by?: string;
}

/** Finished plans kept per service in `sched/history/<service>/`. */
export const PLAN_HISTORY_KEPT = 20;
