import type { Command } from 'commander';
import type { ClientFlags } from '../api/client.js';
import { appsGet, appsList, appsRemove } from '../api/ops/apps.js';
import { terminalSafe } from '../util/terminal.js';
import { clientFlags, type StoreFlags } from './cluster.js';
import { print } from './common.js';
import { ago } from './operator.js';
import { printJson, withClient } from './output.js';

type Flags = StoreFlags & ClientFlags;

/**
 * `backplane apps`, `backplane app NAME`, `backplane app remove NAME`: application objects (`kind: redis`, ...) and
 * what their backplanes say about them — which member is the primary, replication lag, the last failover step by
 * step — beside what the platform knows of each member (host, state, what the instance itself reported).
 */
export function registerApps(program: Command): void {
  clientFlags(program.command('apps').description('application objects (kind: redis, postgres, ...) and their state')).action(async (flags: Flags) => {
    process.exitCode = await withClient(flags, async (client, json) => {
      const rows = await client.call(appsList, {});
      if (json) return printJson(rows);
      if (rows.length === 0) print('no application objects (deploy one: `backplane deploy -f cache.yaml` with kind: redis)\n');
      else print(`${'NAME'.padEnd(20)} ${'KIND'.padEnd(10)} ${'MEMBERS'.padStart(7)}  STATE\n`);
      for (const r of rows) print(`${r.name.padEnd(20)} ${r.kind.padEnd(10)} ${String(r.members.length).padStart(7)}  ${clean(r.removed ? '(removed)' : (r.error ?? r.summary ?? 'waiting for its backplane'))}\n`);
    });
  });

  const app = clientFlags(program.command('app').description('one application object: its backplane\'s view, members, last failover').argument('<name>'));
  app.action(async (name: string, flags: Flags) => {
    process.exitCode = await withClient(flags, async (client, json) => {
      const v = await client.call(appsGet, { name });
      if (json) return printJson(v);
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

  clientFlags(app.command('remove').description('remove an application object and every service it became').argument('<name>')).action(async (name: string, flags: Flags) => {
    process.exitCode = await withClient(flags, async (client, json) => {
      const r = await client.call(appsRemove, { name });
      if (json) return printJson(r);
      print(`${name}: removed with its services (${r.services.join(', ')}); their instances are being stopped\n`);
    });
  });
}

/** A backplane's and an instance's words reach the operator's terminal: no escape sequences through, one line each. */
function clean(s: string): string {
  return terminalSafe(s).replace(/\n/g, ' ');
}
