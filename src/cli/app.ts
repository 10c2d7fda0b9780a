import type { Command } from 'commander';
import { keys } from '../cluster/keys.js';
import { BackplaneError } from '../errors.js';
import type { AppRecord, AppStateRecord, ServiceRecord } from '../scheduler/records.js';
import type { SchedState } from '../scheduler/state.js';
import { terminalSafe } from '../util/terminal.js';
import { storeFlags, withStore, type StoreFlags } from './cluster.js';
import { print } from './common.js';
import { ago, operatorContext, operatorSigner } from './operator.js';

/**
 * `backplane apps`, `backplane app NAME`, `backplane app remove NAME`: application objects (`kind: redis`, ...) and
 * what their backplanes say about them — which member is the primary, replication lag, the last failover step by
 * step — beside what the platform knows of each member (host, state, what the instance itself reported).
 */
export function registerApps(program: Command): void {
  storeFlags(program.command('apps').description('application objects (kind: redis, postgres, ...) and their state')).action(async (flags: StoreFlags) => {
    process.exitCode = await withStore(flags, async (store) => {
      const state = await (await operatorContext(store, flags)).readState();
      const rows = [...state.apps].map(([name, { record }]) => appView(state, name, record));
      if (flags.json === true) {
        process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
        return;
      }
      if (rows.length === 0) print('no application objects (deploy one: `backplane deploy -f cache.yaml` with kind: redis)\n');
      else print(`${'NAME'.padEnd(20)} ${'KIND'.padEnd(10)} ${'MEMBERS'.padStart(7)}  STATE\n`);
      for (const r of rows) print(`${r.name.padEnd(20)} ${r.kind.padEnd(10)} ${String(r.members.length).padStart(7)}  ${clean(r.removed ? '(removed)' : (r.error ?? r.summary ?? 'waiting for its backplane'))}\n`);
    });
  });

  const app = storeFlags(program.command('app').description('one application object: its backplane\'s view, members, last failover').argument('<name>'));
  app.action(async (name: string, flags: StoreFlags) => {
    process.exitCode = await withStore(flags, async (store) => {
      const state = await (await operatorContext(store, flags)).readState();
      const rec = state.apps.get(name)?.record;
      if (rec === undefined) throw new BackplaneError('E_USAGE', `no application object "${name}"`, { hint: 'see `backplane apps`' });
      const v = appView(state, name, rec);
      if (flags.json === true) {
        process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);
        return;
      }
      print(`${name}: ${v.kind}${v.removed ? ' (removed)' : ''}, services ${v.services.join(', ') || '-'}, deployed ${v.deployedAt}\n`);
      if (v.error !== undefined) print(`  BACKPLANE ERROR: ${clean(v.error)}\n`);
      print(`  ${clean(v.summary ?? 'its backplane has not reported yet')}\n`);
      for (const [k, val] of Object.entries(v.fields)) print(`  ${clean(k)}: ${clean(String(val))}\n`);
      for (const [entry, list] of Object.entries(v.discovery)) print(`  discovery ${name}.${entry}: ${list.join(', ') || '(none)'}\n`);
      if (v.members.length > 0) print(`\n  ${'MEMBER'.padEnd(28)} ${'HOST'.padEnd(14)} ${'STATE'.padEnd(10)} ${'ROLE'.padEnd(9)} REPORT\n`);
      for (const m of v.members) print(`  ${m.allocId.padEnd(28)} ${m.host.padEnd(14)} ${m.state.padEnd(10)} ${clean(m.role ?? '-').padEnd(9)} ${clean(m.message ?? '')}\n`);
      const f = v.lastFailover;
      if (f !== undefined) {
        print(`\n  last failover ${ago(f.at)} ago: ${clean(f.from ?? '?')} -> ${clean(f.to)} (${clean(f.reason)})\n`);
        const t0 = f.timeline[0]?.at ?? f.at;
        for (const t of f.timeline) print(`    +${String(t.at - t0).padStart(6)} ms  ${clean(t.message)}\n`);
      }
    });
  });

  storeFlags(app.command('remove').description('remove an application object and every service it became').argument('<name>')).action(async (name: string, flags: StoreFlags) => {
    process.exitCode = await withStore(flags, async (store) => {
      const ctx = await operatorContext(store, flags);
      const signer = await operatorSigner(ctx);
      const state = await ctx.readState();
      const rec = state.apps.get(name)?.record;
      if (rec === undefined || 'removed' in rec) throw new BackplaneError('E_USAGE', `no application object "${name}"`, { hint: 'see `backplane apps`' });
      const at = new Date().toISOString();
      // Signed tombstones, as for a service: a deleted key could be anyone's doing.
      for (const svc of rec.services) {
        const key = keys.service(svc);
        if (state.services.get(svc)?.spec?.app?.name !== name) continue;
        await store.put(key, signer.sign(key, JSON.stringify({ removed: true, name: svc, at } satisfies ServiceRecord)));
      }
      const key = keys.app(name);
      await store.put(key, signer.sign(key, JSON.stringify({ removed: true, name, at } satisfies AppRecord)));
      print(`${name}: removed with its services (${rec.services.join(', ')}); their instances are being stopped\n`);
    });
  });
}

export interface AppView {
  readonly name: string;
  readonly kind: string;
  readonly removed: boolean;
  readonly services: readonly string[];
  readonly deployedAt: string;
  readonly params: Readonly<Record<string, unknown>>;
  readonly summary?: string;
  readonly error?: string;
  readonly fields: Readonly<Record<string, string | number | boolean>>;
  /** entry -> "allocId host:port" of each member it lists. */
  readonly discovery: Readonly<Record<string, readonly string[]>>;
  readonly members: readonly { allocId: string; service: string; host: string; state: string; role?: string; message?: string; report?: unknown }[];
  readonly lastFailover?: AppStateRecord['status'] extends infer S ? (S extends { lastFailover?: infer F } ? F : never) : never;
}

export function appView(state: SchedState, name: string, record: AppRecord): AppView {
  const st = state.appStates.get(name);
  const removed = 'removed' in record;
  const services = removed ? [] : record.services;
  const members: AppView['members'][number][] = [];
  for (const a of state.assigns.values()) {
    if (!services.includes(a.alloc.service) || a.spec.app?.name !== name) continue;
    const s = state.statuses.get(a.alloc.id);
    const own = st?.status?.members?.[a.alloc.id];
    const report = s?.host === a.alloc.host ? s.app : undefined;
    const role = own?.role ?? (typeof report?.state?.['role'] === 'string' ? report.state['role'] : undefined);
    const message = own?.message ?? report?.message;
    members.push({
      allocId: a.alloc.id,
      service: a.alloc.service,
      host: a.alloc.host,
      state: s?.host === a.alloc.host ? s.state : 'pending',
      ...(role === undefined ? {} : { role }),
      ...(message === undefined ? {} : { message }),
      ...(report?.state === undefined ? {} : { report: report.state }),
    });
  }
  members.sort((x, y) => (x.allocId < y.allocId ? -1 : 1));
  const discovery: Record<string, string[]> = {};
  for (const [entry, targets] of Object.entries(st?.discovery ?? {})) {
    discovery[entry] = targets.map((t) => {
      const a = state.assigns.get(t.allocId)?.alloc;
      return a === undefined ? `${t.allocId} (gone)` : `${t.allocId} ${a.host}:${a.ports[t.port] ?? '?'}`;
    });
  }
  const lastFailover = st?.status?.lastFailover;
  return {
    name,
    kind: removed ? (st?.kind ?? '?') : record.object.kind,
    removed,
    services,
    deployedAt: removed ? record.at : record.deployedAt,
    params: removed ? {} : record.object.params,
    ...(st?.status?.summary === undefined ? {} : { summary: st.status.summary }),
    ...(st?.error === undefined ? {} : { error: `${st.error.message} (since ${new Date(st.error.at).toISOString()})` }),
    fields: st?.status?.fields ?? {},
    discovery,
    members,
    ...(lastFailover === undefined ? {} : { lastFailover }),
  };
}

/** A backplane's and an instance's words reach the operator's terminal: no escape sequences through, one line each. */
function clean(s: string): string {
  return terminalSafe(s).replace(/\n/g, ' ');
}
