import type { Command } from 'commander';
import { keys } from '../cluster/keys.js';
import type { ServicePlan } from '../scheduler/plan-types.js';
import { BackplaneError } from '../errors.js';
import type { DrainRecord, ScaleRecord, ServiceRecord } from '../scheduler/records.js';
import { outOfBounds, scaleSource } from '../scheduler/scale.js';
import { capacityOf, readEvents, type SchedState } from '../scheduler/state.js';
import type { Resources, ServiceSpec } from '../scheduler/types.js';
import { parseDuration } from '../util/duration.js';
import { storeFlags, withStore, type StoreFlags } from './cluster.js';
import { parseIntOption, print } from './common.js';
import { ago, operatorContext, operatorSigner, size } from './operator.js';

/**
 * The operator's view of the service backplane and its levers: `services`, `service NAME`, `scale`, `remove`,
 * `drain`, `undrain`, and the capacity table of `hosts`. Reads show only verified records (a forged status never
 * shows up as healthy); writes are operator records signed by this host (see operator.ts).
 */
export function registerServices(program: Command): void {
  storeFlags(program.command('services').description('every service: version, instances wanted, placed and healthy')).action(async (flags: StoreFlags) => {
    process.exitCode = await withStore(flags, async (store) => {
      const ctx = await operatorContext(store, flags);
      const state = await ctx.readState();
      const rows = serviceRows(state);
      if (flags.json === true) {
        process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
        return;
      }
      if (rows.length === 0) print('no services (deploy one with `backplane deploy -f spec.yaml`)\n');
      else print(`${'NAME'.padEnd(20)} ${'VERSION'.padEnd(14)} ${'WANTED'.padStart(6)} ${'PLACED'.padStart(6)} ${'HEALTHY'.padStart(7)}  ${'DEPLOYED'.padEnd(24)}  PLAN\n`);
      for (const r of rows) {
        print(`${r.name.padEnd(20)} ${(r.removed ? '(removed)' : r.version).slice(0, 14).padEnd(14)} ${`${r.scaledBy === undefined ? '' : '*'}${r.count}`.padStart(6)} ${String(r.placed).padStart(6)} ${String(r.healthy).padStart(7)}  ${r.deployedAt.padEnd(24)}  ${r.plan ?? '-'}\n`);
      }
      const scaled = rows.filter((r) => r.scaledBy !== undefined);
      if (scaled.length > 0) print('\n');
      for (const r of scaled) print(`* ${r.name}: ${countText(r)}\n`);
      warnProblems(state);
    });
  });

  storeFlags(program.command('service <name>').description('one service: each instance with its host, version, state, health, restarts and since when; its events'))
    .option('--events <n>', 'how many of its latest events to show', parseIntOption('--events', 0), 20)
    .action(async (name: string, flags: StoreFlags & { events: number }) => {
      process.exitCode = await withStore(flags, async (store) => {
        const ctx = await operatorContext(store, flags);
        const state = await ctx.readState();
        const svc = state.services.get(name);
        const instances = instanceRows(state, name);
        if (svc === undefined && instances.length === 0) throw new BackplaneError('E_USAGE', `no service "${name}"`, { hint: 'see `backplane services`' });
        const events = await readEvents(store, ctx.view, { service: name, limit: flags.events });
        if (flags.json === true) {
          const scale = svc?.spec === undefined ? undefined : { ...scaleSource(svc.spec, svc.deployedAt, state.scales.get(name)), bounds: svc.spec.scale ?? null };
          process.stdout.write(`${JSON.stringify({ name, spec: svc?.spec ?? null, removed: svc?.removed === true, deployedAt: svc?.deployedAt, by: svc?.by, ...(scale === undefined ? {} : { scale }), instances, events }, null, 2)}\n`);
          return;
        }
        const spec = svc?.spec;
        print(`service ${name}: ${svc?.removed === true ? 'removed' : `version ${spec?.version ?? '?'}, ${countOf(state, name)} wanted`}, deployed ${svc?.deployedAt ?? '?'} by ${svc?.by ?? '?'}\n`);
        if (spec !== undefined && svc !== undefined) print(`  ${countText(countRow(spec, svc.deployedAt, state.scales.get(name)))}\n`);
        if (spec !== undefined) print(`  each: ${spec.resources.cpu} cpu, ${size(spec.resources.memory)} memory${spec.ports.length === 0 ? '' : `, ports ${spec.ports.map((p) => p.name + (p.static === undefined ? '' : `=${p.static}`)).join(' ')}`}\n`);
        const plan = state.plans.get(name);
        if (plan !== undefined) print(`  plan: ${planSummary(plan)}${plan.why === undefined ? '' : ` - ${plan.why}`} (backplane plan ${name})\n`);
        print(`\n${'INSTANCE'.padEnd(28)} ${'HOST'.padEnd(16)} ${'VERSION'.padEnd(14)} ${'STATE'.padEnd(10)} ${'RESTARTS'.padStart(8)}  SINCE  PORTS\n`);
        for (const i of instances) {
          print(`${i.id.padEnd(28)} ${i.host.padEnd(16)} ${i.version.slice(0, 14).padEnd(14)} ${i.state.padEnd(10)} ${String(i.restarts).padStart(8)}  ${(i.since === undefined ? '-' : ago(i.since)).padEnd(5)}  ${Object.entries(i.ports).map(([k, v]) => `${k}=${v}`).join(' ')}${i.message === undefined ? '' : `\n${' '.repeat(30)}${i.message}`}\n`);
        }
        if (events.length > 0) print('\nEVENTS\n');
        for (const e of events) print(`  ${new Date(e.at).toISOString()}  ${e.message}\n`);
        warnProblems(state);
      });
    });

  storeFlags(program.command('scale <name> <count>').description('set how many instances a service runs (scaling down stops the newest first)')).action(
    async (name: string, countText: string, flags: StoreFlags) => {
      process.exitCode = await withStore(flags, async (store) => {
        const count = parseIntOption('count', 0)(countText);
        const ctx = await operatorContext(store, flags);
        const signer = await operatorSigner(ctx);
        const state = await ctx.readState();
        const svc = state.services.get(name);
        if (svc?.spec === undefined) throw new BackplaneError('E_USAGE', `no service "${name}" to scale`, { hint: 'deploy it first: `backplane deploy -f spec.yaml`' });
        const b = svc.spec.scale;
        if (b !== undefined && outOfBounds(svc.spec, count) !== undefined)
          throw new BackplaneError('E_USAGE', `${count} is outside ${name}'s scale bounds ${b.min}..${b.max}`, {
            hint: `the operator's count must lie within the bounds; to go beyond them, change scale: { min, max } in the spec and deploy it`,
          });
        const key = keys.service(name);
        const kv = await store.get(key);
        // The count changes, the version does not: scaling never replaces running instances.
        const record: ServiceRecord = { spec: { ...svc.spec, count }, source: `scale (was ${svc.spec.count})`, deployedAt: new Date().toISOString() };
        const r = await store.cas(key, kv?.modRevision ?? 0, signer.sign(key, JSON.stringify(record)));
        if (!r.ok) throw new BackplaneError('E_IO', `service ${name} changed while scaling it`, { retryable: true, hint: 'run the command again' });
        const was = countOf(state, name);
        print(`${name}: ${was} -> ${count} instances${was !== svc.spec.count ? ` (it ran ${was} as scaled by ${state.scales.get(name)?.by ?? '?'}; this count replaces that)` : ''}\n`);
      });
    },
  );

  storeFlags(program.command('remove <name>').description('stop every instance of a service and forget it')).action(async (name: string, flags: StoreFlags) => {
    process.exitCode = await withStore(flags, async (store) => {
      const ctx = await operatorContext(store, flags);
      const signer = await operatorSigner(ctx);
      const state = await ctx.readState();
      if (!state.services.has(name) && instanceRows(state, name).length === 0) throw new BackplaneError('E_USAGE', `no service "${name}"`, { hint: 'see `backplane services`' });
      const key = keys.service(name);
      // A signed tombstone, not a delete: a deleted key could be anyone's doing, and must never stop a service.
      const record: ServiceRecord = { removed: true, name, at: new Date().toISOString() };
      await store.put(key, signer.sign(key, JSON.stringify(record)));
      print(`${name}: removed; its instances are being stopped\n`);
    });
  });

  storeFlags(program.command('drain <host>').description("move every instance off a host, within each service's disruption budget"))
    .option('--deadline <duration>', 'after this long, stop whatever is still there without waiting (e.g. 10m)')
    .action(async (host: string, flags: StoreFlags & { deadline?: string }) => {
      process.exitCode = await withStore(flags, async (store) => {
        const deadlineMs = flags.deadline === undefined ? undefined : parseDuration(flags.deadline);
        if (flags.deadline !== undefined && deadlineMs === undefined) throw new BackplaneError('E_USAGE', `--deadline "${flags.deadline}" is not a duration`, { hint: 'e.g. --deadline 10m' });
        await writeDrain(store, flags, host, { drain: true, ...(deadlineMs === undefined ? {} : { deadline: Date.now() + deadlineMs }), at: new Date().toISOString() });
        print(`${host}: draining${deadlineMs === undefined ? '' : `, deadline in ${flags.deadline ?? ''}`}; follow with \`backplane hosts\`\n`);
      });
    });

  storeFlags(program.command('undrain <host>').description('let the scheduler place instances on a host again')).action(async (host: string, flags: StoreFlags) => {
    process.exitCode = await withStore(flags, async (store) => {
      await writeDrain(store, flags, host, { drain: false, at: new Date().toISOString() });
      print(`${host}: accepting instances again\n`);
    });
  });
}

async function writeDrain(store: Parameters<Parameters<typeof withStore>[1]>[0], flags: StoreFlags, host: string, record: DrainRecord): Promise<void> {
  const ctx = await operatorContext(store, flags);
  const signer = await operatorSigner(ctx);
  if (ctx.view.state(host) === 'unknown') throw new BackplaneError('E_USAGE', `no host "${host}" in the cluster`, { hint: 'see `backplane hosts`' });
  const key = keys.drain(host);
  await store.put(key, signer.sign(key, JSON.stringify(record)));
}

export interface ServiceRow {
  readonly name: string;
  readonly version: string;
  readonly count: number;
  readonly placed: number;
  readonly healthy: number;
  readonly removed: boolean;
  readonly deployedAt: string;
  /** The current plan in one phrase: "web-4 update v1 -> v2 running 3/6". */
  readonly plan?: string;
  /** The operator's count, when `count` (the count in force) is not it. */
  readonly operatorCount: number;
  readonly bounds?: { readonly min: number; readonly max: number };
  /** Who chose the count in force within the bounds ("instance worker.0.1a2b3c4d"), and why. */
  readonly scaledBy?: string;
  readonly scaleReason?: string;
}

/** The count in force and where it came from. */
function countRow(spec: ServiceSpec, deployedAt: string, record: ScaleRecord | undefined): Pick<ServiceRow, 'count' | 'operatorCount' | 'bounds' | 'scaledBy' | 'scaleReason'> {
  const src = scaleSource(spec, deployedAt, record);
  return {
    count: src.count,
    operatorCount: src.operatorCount,
    ...(spec.scale === undefined ? {} : { bounds: spec.scale }),
    ...(src.scaledBy === undefined ? {} : { scaledBy: src.scaledBy }),
    ...(src.reason === undefined ? {} : { scaleReason: src.reason }),
  };
}

/** "count 4 (scaled by instance worker.0.1a2b3c4d: queue length 40; bounds 1..5; operator's count 2)". */
export function countText(r: Pick<ServiceRow, 'count' | 'operatorCount' | 'bounds' | 'scaledBy' | 'scaleReason'>): string {
  const bounds = r.bounds === undefined ? 'no scale bounds: only the operator changes it' : `bounds ${r.bounds.min}..${r.bounds.max}`;
  if (r.scaledBy === undefined) return `count ${r.count} (the operator's; ${bounds})`;
  return `count ${r.count} (scaled by ${r.scaledBy}${r.scaleReason === undefined ? '' : `: ${r.scaleReason}`}; ${bounds}; operator's count ${r.operatorCount})`;
}

function countOf(state: SchedState, name: string): number {
  const svc = state.services.get(name);
  return svc?.spec === undefined ? 0 : scaleSource(svc.spec, svc.deployedAt, state.scales.get(name)).count;
}

/** One line for a plan: id, kind, versions, status, steps complete of all. */
export function planSummary(p: ServicePlan): string {
  const steps = p.phases.flatMap((ph) => ph.steps);
  const done = steps.filter((x) => x.state === 'complete').length;
  const versions = p.kind === 'update' || p.kind === 'rollback' ? ` ${p.fromVersion ?? '?'} -> ${p.toVersion}` : '';
  return `${p.id} ${p.kind}${versions} ${p.failedAt === undefined ? p.status : 'failed, waiting'} ${done}/${steps.length}`;
}

export function serviceRows(state: SchedState): ServiceRow[] {
  const names = new Set([...state.services.keys(), ...[...state.assigns.values()].map((a) => a.alloc.service)]);
  return [...names].sort().map((name) => {
    const svc = state.services.get(name);
    const inst = instanceRows(state, name);
    return {
      name,
      version: svc?.spec?.version ?? '?',
      ...(svc?.spec === undefined ? { count: 0, operatorCount: 0 } : countRow(svc.spec, svc.deployedAt, state.scales.get(name))),
      placed: inst.length,
      healthy: inst.filter((i) => i.state === 'healthy' || (i.state === 'running' && svc?.spec?.health === undefined)).length,
      removed: svc?.removed === true,
      deployedAt: svc?.deployedAt ?? '?',
      ...(state.plans.has(name) ? { plan: planSummary(state.plans.get(name)!) } : {}),
    };
  });
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

export function instanceRows(state: SchedState, service: string): InstanceRow[] {
  const alive = new Set(state.members.filter((m) => m.verified).map((m) => m.host));
  return [...state.assigns.values()]
    .filter((a) => a.alloc.service === service)
    .map((a) => {
      const st = state.statuses.get(a.alloc.id);
      const hostAlive = alive.has(a.alloc.host);
      return {
        id: a.alloc.id,
        index: a.alloc.index,
        host: a.alloc.host,
        version: a.alloc.version,
        state: hostAlive ? (st?.state ?? 'pending') : 'host-down',
        restarts: st?.restarts ?? 0,
        ...(st === undefined ? {} : { since: st.since }),
        ...(st?.message === undefined ? {} : { message: st.message }),
        ports: a.alloc.ports,
        hostAlive,
      };
    })
    .sort((x, y) => x.index - y.index || x.id.localeCompare(y.id));
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

export function hostRows(state: SchedState): HostRow[] {
  const rows = new Map<string, HostRow>();
  const used = new Map<string, { cpu: number; memory: number; n: number }>();
  for (const a of state.assigns.values()) {
    const u = used.get(a.alloc.host) ?? { cpu: 0, memory: 0, n: 0 };
    u.cpu += a.alloc.resources.cpu;
    u.memory += a.alloc.resources.memory;
    u.n++;
    used.set(a.alloc.host, u);
  }
  for (const m of state.members) {
    if (!m.verified || m.record === undefined) continue;
    const cap = capacityOf(m);
    const u = used.get(m.host) ?? { cpu: 0, memory: 0, n: 0 };
    rows.set(m.host, {
      host: m.host,
      alive: true,
      draining: state.drains.get(m.host)?.drain === true,
      capacity: cap,
      reserved: { cpu: round(u.cpu), memory: u.memory },
      free: { cpu: round(cap.cpu - u.cpu), memory: cap.memory - u.memory },
      instances: u.n,
      labels: m.record.labels,
    });
  }
  for (const [host, u] of used) {
    if (rows.has(host)) continue;
    rows.set(host, { host, alive: false, draining: state.drains.get(host)?.drain === true, capacity: { cpu: 0, memory: 0 }, reserved: { cpu: round(u.cpu), memory: u.memory }, free: { cpu: 0, memory: 0 }, instances: u.n, labels: {} });
  }
  return [...rows.values()].sort((a, b) => a.host.localeCompare(b.host));
}

export function printHostRows(rows: readonly HostRow[]): void {
  print(`${'HOST'.padEnd(20)} ${'STATE'.padEnd(9)} ${'CPU (free/cap)'.padEnd(15)} ${'MEMORY (free/cap)'.padEnd(18)} ${'INSTANCES'.padStart(9)}  LABELS\n`);
  for (const r of rows) {
    const st = !r.alive ? 'down' : r.draining ? 'draining' : 'ready';
    print(
      `${r.host.padEnd(20)} ${st.padEnd(9)} ${`${r.free.cpu}/${r.capacity.cpu}`.padEnd(15)} ${`${size(Math.max(0, r.free.memory))}/${size(r.capacity.memory)}`.padEnd(18)} ${String(r.instances).padStart(9)}  ${Object.entries(r.labels).map(([k, v]) => `${k}=${v}`).join(' ')}\n`,
    );
  }
}

function round(n: number): number {
  return Math.round(n * 1000) / 1000;
}

function warnProblems(state: SchedState): void {
  if (state.problems.length === 0) return;
  print(`\n${state.problems.length} record${state.problems.length === 1 ? '' : 's'} in the store failed verification and were ignored:\n`);
  for (const p of state.problems.slice(0, 10)) print(`  ${p}\n`);
}
