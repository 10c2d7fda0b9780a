import type { Command } from 'commander';
import type { ClientFlags } from '../api/client.js';
import { namespacesDelete, namespacesGet, namespacesList, namespacesPut, type NamespaceRow } from '../api/ops/namespaces.js';
import { ApiError } from '../api/ops.js';
import { BackplaneError } from '../errors.js';
import { formatAmount, type PolicyDocument, type PolicyInForce } from '../scheduler/policy.js';
import { parseCpu } from '../scheduler/spec-schema.js';
import { parseSize } from '../resources/svc-schema.js';
import { parseDuration } from '../util/duration.js';
import { clientFlags } from './cluster.js';
import { parseIntOption, print } from './common.js';
import { printJson, withClient, type OutputFlags } from './output.js';

/**
 * `backplane namespaces`, `backplane namespace show|set|remove NAME`: namespaces' quotas and defaults
 * (docs/namespaces.md), through the operator API's ops (src/api/ops/namespaces.ts): the local agent's socket, an
 * agent's API with --api and a token, or the store directly.
 */

type NsFlags = ClientFlags & OutputFlags;

interface SetFlags extends NsFlags {
  cpu?: string;
  memory?: string;
  instances?: string;
  maxParallel?: string;
  canary?: string;
  maxUnavailable?: string;
  minHealthy?: string;
  healthyDeadline?: string;
  progressDeadline?: string;
  autoRevert?: boolean;
  autoPromote?: boolean;
  startFirst?: boolean;
  clearQuota?: boolean;
  clearDefaults?: boolean;
}

export function registerNamespaces(program: Command): void {
  clientFlags(program.command('namespaces').description('every namespace: its quota and what its instances use, its defaults, its services')).action(async (flags: NsFlags) => {
    process.exitCode = await withClient(flags, async (client, json) => {
      const rows = await client.call(namespacesList, {});
      if (json) {
        printJson(rows);
        return;
      }
      if (rows.length === 0) {
        print('no namespaces (every service is in "default" until it names another; set a quota with `backplane namespace set NAME --memory 8G`)\n');
        return;
      }
      print(`${'NAMESPACE'.padEnd(16)} ${'CPU (used/quota)'.padEnd(17)} ${'MEMORY (used/quota)'.padEnd(20)} ${'INSTANCES'.padEnd(10)} ${'SERVICES'.padStart(8)}  DEFAULTS\n`);
      for (const r of rows) {
        const q = r.quota;
        const col = (dim: 'cpu' | 'memory' | 'instances'): string => `${formatAmount(dim, r.used[dim])}/${q?.[dim] === undefined ? '-' : formatAmount(dim, q[dim])}`;
        print(`${r.name.padEnd(16)} ${col('cpu').padEnd(17)} ${col('memory').padEnd(20)} ${col('instances').padEnd(10)} ${String(r.services.length).padStart(8)}  ${defaultsText(r)}\n`);
      }
    });
  });

  const ns = program.command('namespace').description("a namespace's policy: show it, set its quota and defaults, remove it");

  clientFlags(ns.command('show <name>').description('one namespace: quota, use, defaults, services')).action(async (name: string, flags: NsFlags) => {
    process.exitCode = await withClient(flags, async (client, json) => {
      const r = await client.call(namespacesGet, { ns: name });
      if (json) {
        printJson(r);
        return;
      }
      print(`namespace ${r.name}${r.updatedAt === undefined ? ' (no policy)' : `: policy set ${r.updatedAt} by ${r.by ?? '?'}`}\n`);
      for (const dim of ['cpu', 'memory', 'instances'] as const) {
        const limit = r.quota?.[dim];
        print(`  ${dim.padEnd(10)} ${formatAmount(dim, r.used[dim])} used of ${limit === undefined ? 'no quota' : formatAmount(dim, limit)}\n`);
      }
      print(`  defaults   ${defaultsText(r)}\n`);
      print(`  services   ${r.services.length === 0 ? '-' : r.services.join(', ')}\n`);
    });
  });

  clientFlags(ns.command('set <name>').description("set a namespace's quota and defaults (what is not given stays as it was)"))
    .option('--cpu <cores>', 'quota: cores its instances may reserve together (4, 2500m; "none": no limit)')
    .option('--memory <size>', 'quota: memory its instances may reserve together (8G, 512M; "none": no limit)')
    .option('--instances <n>', 'quota: instances it may run together ("none": no limit)')
    .option('--clear-quota', 'remove the whole quota (before the quota flags given with it)')
    .option('--max-parallel <n>', 'default update.maxParallel (0: all at once; "none": the built-in default)')
    .option('--canary <n>', 'default update.canary ("none": the built-in default)')
    .option('--min-healthy <duration>', 'default update.minHealthy (e.g. 5s; "none": the built-in default)')
    .option('--healthy-deadline <duration>', 'default update.healthyDeadline (e.g. 5m; "none": the built-in default)')
    .option('--progress-deadline <duration>', 'default update.progressDeadline (e.g. 10m, 0: none; "none": the built-in default)')
    .option('--auto-revert', 'default update.autoRevert true')
    .option('--no-auto-revert', 'default update.autoRevert false')
    .option('--auto-promote', 'default update.autoPromote true')
    .option('--no-auto-promote', 'default update.autoPromote false')
    .option('--start-first', 'default update.startFirst true')
    .option('--no-start-first', 'default update.startFirst false')
    .option('--max-unavailable <n>', 'default maxUnavailable, the disruption budget ("none": the built-in default)')
    .option('--clear-defaults', 'remove every default (before the default flags given with it)')
    .action(async (name: string, flags: SetFlags) => {
      process.exitCode = await withClient(flags, async (client, json) => {
        let current: NamespaceRow | undefined;
        try {
          current = await client.call(namespacesGet, { ns: name });
        } catch (err) {
          if (!(err instanceof ApiError && err.status === 404)) throw err;
        }
        const doc = applySetFlags(current, flags);
        const r = await client.call(namespacesPut, { ns: name, ...doc } as Parameters<typeof namespacesPut.run>[1]);
        if (json) {
          printJson(r);
          return;
        }
        const quota = r.quota === undefined ? 'no quota' : (['cpu', 'memory', 'instances'] as const).filter((d) => r.quota?.[d] !== undefined).map((d) => `${d} ${formatAmount(d, r.quota?.[d] ?? 0)}`).join(', ');
        print(`namespace ${name}: ${quota}; defaults: ${defaultsText(r)}\n`);
      });
    });

  clientFlags(ns.command('remove <name>').description("remove a namespace's policy: its services keep running, with no quota and the built-in defaults")).action(async (name: string, flags: NsFlags) => {
    process.exitCode = await withClient(flags, async (client, json) => {
      const r = await client.call(namespacesDelete, { ns: name });
      if (json) {
        printJson(r);
        return;
      }
      print(`namespace ${name}: policy removed (no quota; its services use the built-in defaults from their next plan)\n`);
    });
  });
}

/**
 * "update: 2 at a time (namespace), stop first (built-in), canary 0 (built-in), ...": a service's update policy in
 * force and where each value comes from (its spec, its namespace's defaults, the built-in defaults).
 */
export function policyText(p: PolicyInForce, count: number): string {
  const from = (f: keyof PolicyInForce['from']): string => (p.from[f] === 'spec' ? '' : ` (${p.from[f]})`);
  const u = p.update;
  const parallel = u.maxParallel === 0 ? 'all at once' : `${u.maxParallel} at a time`;
  const first = (u.startFirst ?? count <= 1) ? 'start first' : 'stop first';
  const budget = p.maxUnavailable === undefined ? 'the parallelism' : String(p.maxUnavailable);
  return `update: ${parallel}${from('maxParallel')}, ${first}${from('startFirst')}, canary ${u.canary}${from('canary')}, autoRevert ${u.autoRevert}${from('autoRevert')}, autoPromote ${u.autoPromote}${from('autoPromote')}, maxUnavailable ${budget}${from('maxUnavailable')}`;
}

/** "maxParallel 2, autoRevert false, maxUnavailable 1", or "-". */
export function defaultsText(r: Pick<NamespaceRow, 'defaults'>): string {
  const u = r.defaults?.update ?? {};
  const ms = (n: number): string => (n % 60_000 === 0 && n > 0 ? `${n / 60_000}m` : n % 1000 === 0 && n > 0 ? `${n / 1000}s` : `${n}ms`);
  const parts = [
    u.maxParallel === undefined ? undefined : `maxParallel ${u.maxParallel === 0 ? '0 (all at once)' : u.maxParallel}`,
    u.canary === undefined ? undefined : `canary ${u.canary}`,
    u.minHealthyMs === undefined ? undefined : `minHealthy ${ms(u.minHealthyMs)}`,
    u.healthyDeadlineMs === undefined ? undefined : `healthyDeadline ${ms(u.healthyDeadlineMs)}`,
    u.progressDeadlineMs === undefined ? undefined : `progressDeadline ${ms(u.progressDeadlineMs)}`,
    u.autoRevert === undefined ? undefined : `autoRevert ${u.autoRevert}`,
    u.autoPromote === undefined ? undefined : `autoPromote ${u.autoPromote}`,
    u.startFirst === undefined ? undefined : `startFirst ${u.startFirst}`,
    r.defaults?.maxUnavailable === undefined ? undefined : `maxUnavailable ${r.defaults.maxUnavailable}`,
  ].filter((p): p is string => p !== undefined);
  return parts.length === 0 ? '-' : parts.join(', ');
}

type Doc = { quota?: Record<string, number | undefined>; defaults?: { update?: Record<string, number | boolean | undefined>; maxUnavailable?: number } };

/**
 * The policy `set` writes: the current one (as `namespaces.get` answers it, which is a valid document) with the
 * flags applied. Values are checked here, so a typo is refused before anything is written.
 */
export function applySetFlags(current: Pick<NamespaceRow, 'quota' | 'defaults'> | undefined, flags: SetFlags): PolicyDocument {
  const doc: Doc = {};
  if (current?.quota !== undefined && flags.clearQuota !== true) doc.quota = { ...current.quota };
  if (current?.defaults !== undefined && flags.clearDefaults !== true) {
    doc.defaults = { ...(current.defaults.update === undefined ? {} : { update: { ...current.defaults.update } }), ...(current.defaults.maxUnavailable === undefined ? {} : { maxUnavailable: current.defaults.maxUnavailable }) };
  }
  const amount = (flag: string, text: string, parse: (t: string) => number | undefined, example: string): number | undefined => {
    if (text === 'none') return undefined;
    const n = parse(text);
    if (n === undefined) throw new BackplaneError('E_USAGE', `${flag} "${text}" is not valid`, { hint: `e.g. ${flag} ${example}, or ${flag} none` });
    return n;
  };
  const whole = (flag: string) => (t: string): number | undefined => {
    try {
      return parseIntOption(flag, 0)(t);
    } catch {
      return undefined;
    }
  };
  const quota = (dim: string, v: number | undefined): void => {
    const q = { ...doc.quota };
    if (v === undefined) delete q[dim];
    else q[dim] = v;
    doc.quota = q;
  };
  if (flags.cpu !== undefined) quota('cpu', amount('--cpu', flags.cpu, parseCpu, '4 or 2500m'));
  if (flags.memory !== undefined) quota('memory', amount('--memory', flags.memory, (t) => { const n = parseSize(t); return n === undefined || n <= 0 ? undefined : n; }, '8G'));
  if (flags.instances !== undefined) quota('instances', amount('--instances', flags.instances, whole('--instances'), '20'));
  if (doc.quota !== undefined && Object.keys(doc.quota).length === 0) delete doc.quota;

  const update = (field: string, v: number | boolean | undefined): void => {
    const d = { ...doc.defaults };
    const u = { ...d.update };
    if (v === undefined) delete u[field];
    else u[field] = v;
    d.update = u;
    doc.defaults = d;
  };
  const duration = (t: string): number | undefined => (/^\s*\d+(?:\.\d+)?\s*(ms|s|m|h)\s*$/.test(t) || t.trim() === '0' ? parseDuration(t) : undefined);
  if (flags.maxParallel !== undefined) update('maxParallel', amount('--max-parallel', flags.maxParallel, whole('--max-parallel'), '2'));
  if (flags.canary !== undefined) update('canary', amount('--canary', flags.canary, whole('--canary'), '1'));
  if (flags.minHealthy !== undefined) update('minHealthyMs', amount('--min-healthy', flags.minHealthy, duration, '5s'));
  if (flags.healthyDeadline !== undefined) update('healthyDeadlineMs', amount('--healthy-deadline', flags.healthyDeadline, duration, '5m'));
  if (flags.progressDeadline !== undefined) update('progressDeadlineMs', amount('--progress-deadline', flags.progressDeadline, duration, '10m'));
  if (flags.autoRevert !== undefined) update('autoRevert', flags.autoRevert);
  if (flags.autoPromote !== undefined) update('autoPromote', flags.autoPromote);
  if (flags.startFirst !== undefined) update('startFirst', flags.startFirst);
  if (flags.maxUnavailable !== undefined) {
    const v = amount('--max-unavailable', flags.maxUnavailable, whole('--max-unavailable'), '1');
    const d = { ...doc.defaults };
    if (v === undefined) delete d.maxUnavailable;
    else d.maxUnavailable = v;
    doc.defaults = d;
  }
  if (doc.defaults?.update !== undefined && Object.keys(doc.defaults.update).length === 0) delete doc.defaults.update;
  if (doc.defaults !== undefined && Object.keys(doc.defaults).length === 0) delete doc.defaults;
  return JSON.parse(JSON.stringify(doc)) as PolicyDocument;
}
