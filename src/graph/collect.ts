import { posix } from 'node:path';
import type { ExportedResource } from './graph.js';
import type { CollectRule, RawResource } from './raw.js';

/** An exported resource as found in the cluster store: who exported it, and what. */
export interface ExportEntry {
  readonly host: string;
  readonly resource: ExportedResource;
}

/**
 * Which of the cluster's exports this host collects, as raw resources for the graph builder. Pure: the same
 * exports and rules always give the same resources, in a stable order, so a re-render changes only what changed.
 * An export is collected when it is addressed to this host (or to all) and some rule matches its kind and
 * exporter; the first matching rule's `set` is applied.
 */
export function collectResources(self: string, rules: readonly CollectRule[], entries: readonly ExportEntry[]): RawResource[] {
  if (rules.length === 0) return [];
  const out: RawResource[] = [];
  const sorted = [...entries].sort((a, b) => cmp(a.host, b.host) || cmp(a.resource.kind, b.resource.kind) || cmp(a.resource.name, b.resource.name));
  for (const { host, resource: r } of sorted) {
    if (r.to !== '*' && !r.to.includes(self)) continue;
    const rule = rules.find((x) => x.kind === r.kind && (x.from === '*' || x.from.includes(host)));
    if (rule === undefined) continue;
    const params: Record<string, unknown> = { ...r.params };
    for (const [k, v] of Object.entries(rule.set)) params[k] = substitute(v, host, r.name);
    const loc = { file: `exported by ${host}`, line: 0, col: 0 };
    out.push({
      kind: r.kind,
      name: r.name,
      params,
      meta: r.meta,
      origin: host,
      loc,
      locate: () => loc,
      locateMeta: () => loc,
    });
  }
  return out;
}

function substitute(v: unknown, host: string, name: string): unknown {
  if (typeof v !== 'string') return v;
  return v.replace(/\{(host|name|basename)\}/g, (_m, key: string) => (key === 'host' ? host : key === 'name' ? name : posix.basename(name)));
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
