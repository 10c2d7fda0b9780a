import type { Engine } from '../engine/engine.js';
import type { AgentEvent, AgentGraph, AgentStatus, AgentView } from '../api/ops.js';
import { VERSION } from '../version.js';

/** How many of the latest repairs the agent remembers for `backplane status` and the dashboard. */
const REPAIRS_KEPT = 50;

export interface AgentViewSource {
  readonly host: string;
  readonly stateDir: string;
  readonly graphFile: string;
  readonly engine: Engine;
  /** The cluster link's state, asked at each call: the agent connects (and may lose its store) at any time. */
  cluster(): AgentStatus['cluster'];
}

/**
 * What the agent's API shows of its own graph: each resource's state and when it last changed something, the
 * latest repairs, and a feed of resource events for the live stream. Kept from the engine's listeners, so a status
 * call costs one pass over the workers and no check.
 */
export function agentView(src: AgentViewSource): AgentView & { close(): void } {
  const startedAt = new Date().toISOString();
  const lastChange = new Map<string, number>();
  const repairs: { id: string; at: number }[] = [];
  const listeners = new Set<(e: AgentEvent) => void>();
  const emit = (e: AgentEvent): void => {
    for (const l of listeners) l(e);
  };
  const offChange = src.engine.onChange((id) => {
    const at = Date.now();
    lastChange.set(id, at);
    repairs.push({ id, at });
    if (repairs.length > REPAIRS_KEPT) repairs.shift();
    if (listeners.size > 0) emit({ type: 'repair', host: src.host, id, at });
  });
  const offState = src.engine.onState(({ id, state, prev }) => {
    if (listeners.size > 0) emit({ type: 'resource', host: src.host, id, state, prev, at: Date.now() });
  });
  return {
    host: src.host,
    stateDir: src.stateDir,
    status(): AgentStatus {
      const statuses = src.engine.status();
      const byState: Record<string, number> = {};
      for (const s of statuses) byState[s.state] = (byState[s.state] ?? 0) + 1;
      return {
        host: src.host,
        version: VERSION,
        pid: process.pid,
        startedAt,
        graphFile: src.graphFile,
        noop: src.engine.noop,
        settled: src.engine.settled,
        resources: statuses.length,
        byState,
        failed: statuses.filter((s) => s.state === 'failed').map((s) => ({ id: s.id, ...(s.error === undefined ? {} : { error: s.error }) })),
        blocked: statuses.filter((s) => s.state === 'blocked').map((s) => ({ id: s.id, ...(s.blockedBy === undefined ? {} : { blockedBy: s.blockedBy }) })),
        repairs: [...repairs].reverse(),
        cluster: src.cluster(),
      };
    },
    graph(): AgentGraph {
      const g = src.engine.currentGraph();
      const statuses = new Map(src.engine.status().map((s) => [s.id, s]));
      const vertices = g === undefined ? [] : [...g.vertices.values()].map((v) => {
        const s = statuses.get(v.id);
        const at = lastChange.get(v.id);
        return {
          id: v.id,
          kind: v.kind,
          name: v.name,
          state: s?.state ?? 'pending',
          ...(s?.error === undefined ? {} : { error: s.error }),
          ...(s?.blockedBy === undefined ? {} : { blockedBy: s.blockedBy }),
          changes: s?.changes ?? 0,
          runs: s?.runs ?? 0,
          ...(at === undefined ? {} : { lastChange: at }),
        };
      });
      return { host: src.host, vertices, edges: (g?.edges ?? []).map((e) => ({ from: e.from, to: e.to, notify: e.notify })) };
    },
    onEvent(cb) {
      listeners.add(cb);
      return () => listeners.delete(cb);
    },
    close() {
      offChange();
      offState();
      listeners.clear();
    },
  };
}
