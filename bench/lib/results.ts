import type { DriftResult } from '../live/drift.js';
import type { IdleResult } from '../live/idle.js';
import type { ToolId } from '../tools/types.js';

/** The shapes written to bench/results/*.json; the Markdown and text tables are rendered from them alone. */

export interface RunRecord {
  readonly wallS: number;
  readonly maxRssKiB?: number;
  /** Why the run does not count (failed exit, wrong end state, timeout); absent when it was fine. */
  readonly problem?: string;
}

export interface ToolResult {
  readonly runs: RunRecord[];
  /** Median over successful runs, only when every run succeeded. */
  medianS?: number;
  medianRssMiB?: number;
  /** Why the tool was not run on this workload. */
  skipped?: string;
}

/** A reference command's runs (bare `node -e 0`), timed interleaved with the tools' runs of the same workload. */
export interface ReferenceResult {
  readonly id: string;
  readonly title: string;
  readonly result: ToolResult;
}

export interface WorkloadResult {
  readonly id: string;
  readonly title: string;
  readonly idealS?: number;
  readonly results: Partial<Record<ToolId, ToolResult>>;
  /** Absent in results written before references existed. */
  readonly references?: ReferenceResult[];
}

export interface MachineInfo {
  readonly uname: string;
  readonly cpu: string;
  readonly cores: number;
  readonly memoryGiB: number;
  readonly node: string;
}

export interface ToolInfo {
  readonly id: ToolId;
  readonly label: string;
  readonly version: string;
}

export interface LiveResults {
  drift?: DriftResult & { readonly files: number; readonly convergedS: number };
  idle?: IdleResult & { readonly files: number; readonly convergedS: number; readonly stopS: number };
  /** Why a live measurement could not be taken. */
  errors: string[];
}

export interface BenchResults {
  readonly date: string;
  readonly machine: MachineInfo;
  readonly tools: ToolInfo[];
  readonly runs: number;
  readonly slowRuns: number;
  readonly workloads: WorkloadResult[];
  readonly live: LiveResults;
  readonly notes: string[];
}
