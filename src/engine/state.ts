import type { ResourceId } from '../graph/ids.js';

/**
 * A vertex's lifecycle. `pending`, `running` and `retrying` are active (the engine has work to do); `converged`,
 * `failed` and `blocked` are settled (nothing will happen until an event arrives).
 */
export type VertexState = 'pending' | 'running' | 'retrying' | 'converged' | 'failed' | 'blocked' | 'stopped';

export const ACTIVE_STATES: ReadonlySet<VertexState> = new Set(['pending', 'running', 'retrying']);

export interface VertexStatus {
  readonly id: ResourceId;
  readonly state: VertexState;
  /** Why the vertex failed (its last error, formatted for a person). */
  readonly error?: string;
  /** For a blocked vertex: the dependency that failed or is itself blocked. */
  readonly blockedBy?: ResourceId;
  /** How many check/apply runs changed something (or would have, in noop mode). */
  readonly changes: number;
  readonly runs: number;
  /** Changes noop mode found but did not make. */
  readonly pending?: readonly string[];
  readonly diff?: string;
}

export interface ConvergeSummary {
  readonly ok: boolean;
  readonly converged: number;
  readonly failed: readonly VertexStatus[];
  readonly blocked: readonly VertexStatus[];
  /** noop mode: resources that are not in their desired state. */
  readonly wouldChange: readonly VertexStatus[];
}
