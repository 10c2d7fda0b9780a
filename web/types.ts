/**
 * The JSON the dashboard reads: the API's answers, which are what the CLI's `--json` prints (src/cli/services.ts
 * HostRow/ServiceRow/InstanceRow, src/scheduler/plan-types.ts ServicePlan, src/api/ops.ts AgentGraph). Only the
 * fields the dashboard shows are named here. The data is rendered as text only, and numbers go through `num()`, so
 * a record that does not fit these types shows up wrong, never as markup.
 */

export type Role = 'viewer' | 'operator' | 'admin';

export interface WhoAmI {
  readonly name: string;
  readonly role: Role;
  readonly namespace?: string;
}

export interface Resources {
  readonly cpu: number;
  readonly memory: number;
}

export interface HostRow {
  readonly host: string;
  readonly alive: boolean;
  readonly draining: boolean;
  readonly capacity: Resources;
  readonly reserved: Resources;
  readonly free: Resources;
  readonly instances: number;
  readonly labels: Readonly<Record<string, string>>;
}

export interface ServiceRow {
  readonly name: string;
  readonly namespace?: string;
  readonly version: string;
  readonly count: number;
  readonly placed: number;
  readonly healthy: number;
  readonly removed: boolean;
  readonly deployedAt: string;
  readonly plan?: string;
}

export interface InstanceRow {
  readonly id: string;
  readonly index: number;
  readonly host: string;
  readonly version: string;
  readonly state: string;
  readonly restarts: number;
  readonly since?: number;
  readonly message?: string;
  readonly ports: Readonly<Record<string, number>>;
  readonly hostAlive: boolean;
}

export interface EventRecord {
  readonly at: number;
  readonly service?: string;
  readonly message: string;
  readonly host?: string;
}

export interface ServiceDetail {
  readonly name: string;
  readonly namespace?: string;
  readonly scale?: { readonly count?: number };
  readonly spec: { readonly version?: string; readonly namespace?: string; readonly count?: number; readonly resources?: Resources } | null;
  readonly removed: boolean;
  readonly deployedAt?: string;
  readonly by?: string;
  readonly instances: readonly InstanceRow[];
  readonly events: readonly EventRecord[];
}

export interface PlanStep {
  readonly name: string;
  readonly action: string;
  readonly state: string;
  readonly why?: string;
  readonly since: number;
  readonly from?: { readonly allocId: string; readonly host: string; readonly version: string };
  readonly to?: { readonly allocId: string; readonly host: string };
  readonly output?: string;
  readonly forced?: boolean;
}

export interface Plan {
  readonly id: string;
  readonly service: string;
  readonly kind: string;
  readonly fromVersion?: string;
  readonly toVersion: string;
  readonly status: string;
  readonly why?: string;
  readonly paused: boolean;
  readonly promote: 'no' | 'requested' | 'done';
  readonly strategy?: { readonly canary?: number; readonly maxParallel?: number };
  readonly createdAt: number;
  readonly updatedAt: number;
  readonly phases: readonly { readonly name: string; readonly strategy: string; readonly steps: readonly PlanStep[] }[];
  readonly log: readonly { readonly at: number; readonly message: string }[];
  readonly commands: readonly { readonly id: string; readonly action: string; readonly ok: boolean; readonly message: string; readonly at: number }[];
}

export interface PlanAnswer {
  readonly plan: Plan;
}

export interface Vertex {
  readonly id: string;
  readonly kind: string;
  readonly name: string;
  readonly state: string;
  readonly error?: string;
  readonly blockedBy?: string;
  readonly changes: number;
  readonly runs: number;
  readonly lastChange?: number;
}

export interface AgentGraph {
  readonly host: string;
  readonly vertices: readonly Vertex[];
  readonly edges: readonly { readonly from: string; readonly to: string; readonly notify: boolean }[];
}

/** A number from data, or 0. */
export function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : 0;
}

/** A string from data, or ''. */
export function str(v: unknown): string {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return v === undefined || v === null ? '' : JSON.stringify(v);
}

/** An array from data, or []: a list op answers an array, or an object holding one under `key`. */
export function list<T>(v: unknown, key?: string): T[] {
  if (Array.isArray(v)) return v as T[];
  if (key !== undefined && v !== null && typeof v === 'object') {
    const inner = (v as Record<string, unknown>)[key];
    if (Array.isArray(inner)) return inner as T[];
  }
  return [];
}
