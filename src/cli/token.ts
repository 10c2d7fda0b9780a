import type { Command } from 'commander';
import { auditList, tokensCreate, tokensList, tokensRevoke } from '../api/ops/access.js';
import type { ClientFlags } from '../api/client.js';
import { BackplaneError } from '../errors.js';
import { parseDuration } from '../util/duration.js';
import { clientFlags } from './cluster.js';
import { parseIntOption, print } from './common.js';
import { printJson, withClient, type OutputFlags } from './output.js';

/**
 * `backplane token create|list|revoke` and `backplane audit`: the API's access control, for admins. A token's text
 * is printed once, when it is made (only its hash is kept); hand it over like a password.
 */

type Flags = ClientFlags & OutputFlags;

export function registerToken(program: Command): void {
  const token = program.command('token').description('API tokens: make one for a person, a script or Prometheus; list them; revoke one');

  clientFlags(token.command('create').description('make a token (its text is printed once; keep it like a password)'))
    .requiredOption('--name <name>', 'who or what it is for (shown in the audit log): alice, ci, prometheus')
    .requiredOption('--role <role>', 'viewer (read), operator (also deploy, scale, steer rollouts, drain) or admin (also policy and tokens)')
    .option('--namespace <ns>', 'only this namespace: its services, instances and plans (viewer and operator tokens)')
    .option('--ttl <duration>', 'expires after this long: 30d, 12h, 90m (default: never)')
    .action(async (flags: Flags & { name: string; role: string; namespace?: string; ttl?: string }) => {
      process.exitCode = await withClient(flags, async (client, json) => {
        if (flags.role !== 'viewer' && flags.role !== 'operator' && flags.role !== 'admin') {
          throw new BackplaneError('E_USAGE', `--role "${flags.role}" is not a role`, { hint: 'viewer, operator or admin' });
        }
        const ttlSeconds = flags.ttl === undefined ? undefined : ttlOf(flags.ttl);
        const made = await client.call(tokensCreate, {
          name: flags.name,
          role: flags.role,
          ...(flags.namespace === undefined ? {} : { namespace: flags.namespace }),
          ...(ttlSeconds === undefined ? {} : { ttlSeconds }),
        });
        if (json) return printJson(made);
        process.stdout.write(`${made.token}\n`);
        process.stderr.write(
          `token ${made.info.id} for ${made.info.name}: ${made.info.role}${made.info.namespace === undefined ? '' : ` in namespace ${made.info.namespace}`}, ${made.info.expiresAt === undefined ? 'does not expire' : `expires ${made.info.expiresAt}`}\n` +
            'it is shown only now; use it as: BACKPLANE_TOKEN=... backplane services --api https://HOST:PORT, or in the dashboard\n',
        );
      });
    });

  clientFlags(token.command('list').description('every token: id, name, role, namespace, expiry, state (never the secret)')).action(async (flags: Flags) => {
    process.exitCode = await withClient(flags, async (client, json) => {
      const rows = await client.call(tokensList, {});
      if (json) return printJson(rows);
      if (rows.length === 0) return print('no tokens (make one: backplane token create --name NAME --role viewer)\n');
      print(`${'ID'.padEnd(17)} ${'NAME'.padEnd(16)} ${'ROLE'.padEnd(9)} ${'NAMESPACE'.padEnd(12)} ${'STATE'.padEnd(8)} EXPIRES\n`);
      for (const t of rows) {
        print(`${t.id.padEnd(17)} ${t.name.padEnd(16)} ${t.role.padEnd(9)} ${(t.namespace ?? '-').padEnd(12)} ${t.state.padEnd(8)} ${t.expiresAt ?? 'never'}${t.why === undefined ? '' : `  (${t.why})`}\n`);
      }
    });
  });

  clientFlags(token.command('revoke').description('revoke a token: every agent refuses it within seconds').argument('<id>', 'the token id (backplane token list)')).action(async (id: string, flags: Flags) => {
    process.exitCode = await withClient(flags, async (client, json) => {
      const info = await client.call(tokensRevoke, { id });
      if (json) return printJson(info);
      print(`revoked token ${info.id} (${info.name})\n`);
    });
  });

  clientFlags(program.command('audit').description("the agent's audit log: every change asked through its API, who asked, when, and how it ended"))
    .option('--limit <n>', 'how many of the latest entries', parseIntOption('--limit', 1), 50)
    .action(async (flags: Flags & { limit: number }) => {
      process.exitCode = await withClient(flags, async (client, json) => {
        const rows = await client.call(auditList, { limit: flags.limit });
        if (json) return printJson(rows);
        if (rows.length === 0) return print('the audit log is empty\n');
        for (const e of rows) {
          print(`${e.at}  ${e.who.padEnd(16)} ${e.role.padEnd(8)} ${e.op.padEnd(18)} ${e.outcome.padEnd(7)} ${JSON.stringify(e.input)}${e.error === undefined ? '' : `  ${e.error}`}\n`);
        }
      });
    });
}

function ttlOf(text: string): number {
  const units: Record<string, number> = { d: 86_400_000, w: 7 * 86_400_000 };
  const m = /^(\d+(?:\.\d+)?)([dw])$/.exec(text.trim());
  const ms = m === null ? parseDuration(text) : Number(m[1]) * (units[m[2] ?? 'd'] ?? 0);
  if (ms === undefined || ms < 1000) throw new BackplaneError('E_USAGE', `--ttl "${text}" is not a duration of at least 1s`, { hint: 'e.g. --ttl 30d, 12h, 90m' });
  return Math.round(ms / 1000);
}
