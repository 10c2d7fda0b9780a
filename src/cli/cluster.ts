import type { Command } from 'commander';
import { join } from 'node:path';
import { ClusterLink } from '../cluster/link.js';
import { keys, parseExportedKey } from '../cluster/keys.js';
import type { Store } from '../cluster/store.js';
import { defaultStateDir } from '../state-dir.js';
import { EXIT, reportError } from './common.js';
import { splitUrls } from './run.js';

interface ClusterFlags {
  etcd?: string;
  cluster: string;
  stateDir?: string;
  json?: boolean;
}

async function openStore(flags: ClusterFlags): Promise<Store> {
  const urls = splitUrls(flags.etcd);
  if (urls.length > 0) {
    const { EtcdStore } = await import('../cluster/etcd-store.js');
    return new EtcdStore({ endpoints: urls, cluster: flags.cluster });
  }
  const { EmbeddedStore } = await import('../cluster/embedded-store.js');
  return EmbeddedStore.open({ dir: join(flags.stateDir ?? defaultStateDir(), 'store') });
}

export function registerCluster(program: Command): void {
  const cluster = program.command('cluster').description('inspect the cluster: its hosts, their exports, the store');
  const common = (c: Command): Command =>
    c
      .option('--etcd <urls>', 'etcd client URLs (comma-separated); default: the embedded store in --state-dir')
      .option('--cluster <name>', 'cluster name', 'default')
      .option('--state-dir <dir>', 'state directory of the embedded store')
      .option('--json', 'print JSON');

  common(cluster.command('members').description('the hosts registered in the cluster, with their facts and liveness')).action(
    async (flags: ClusterFlags) => {
      process.exitCode = await withStore(flags, async (store) => {
        const members = await ClusterLink.members(store);
        if (flags.json === true) {
          process.stdout.write(`${JSON.stringify(members, null, 2)}\n`);
          return;
        }
        if (members.length === 0) process.stdout.write('no hosts registered\n');
        for (const m of members) {
          const r = m.record;
          const facts = r === undefined ? 'unreadable record' : `${r.facts.cpus} cpus, ${gib(r.facts.memory.total)} memory, ${r.facts.ipv4}, up since ${r.startedAt}`;
          const labels = r === undefined || Object.keys(r.labels).length === 0 ? '' : ` [${Object.entries(r.labels).map(([k, v]) => `${k}=${v}`).join(' ')}]`;
          process.stdout.write(`${m.host.padEnd(20)} alive  ${facts}${labels}\n`);
        }
      });
    },
  );

  common(cluster.command('status').description("the store's health, the hosts and what each exports")).action(async (flags: ClusterFlags) => {
    process.exitCode = await withStore(flags, async (store) => {
      const health = await store.health({ timeoutMs: 2000 });
      const members = await ClusterLink.members(store);
      const { kvs } = await store.list(keys.exportedPrefix);
      const exports = new Map<string, string[]>();
      for (const kv of kvs) {
        const k = parseExportedKey(kv.key);
        if (k === undefined) continue;
        const list = exports.get(k.host) ?? [];
        list.push(`${k.kind}[${k.name}]`);
        exports.set(k.host, list);
      }
      if (flags.json === true) {
        process.stdout.write(`${JSON.stringify({ store: { kind: store.kind, ...health }, members, exports: Object.fromEntries(exports) }, null, 2)}\n`);
        return;
      }
      process.stdout.write(`store: ${store.kind}, ${health.ok ? 'healthy' : 'UNHEALTHY'} (${health.detail})\n`);
      process.stdout.write(`hosts: ${members.length}\n`);
      for (const m of members) {
        const ex = exports.get(m.host) ?? [];
        process.stdout.write(`  ${m.host}: alive, exports ${ex.length}${ex.length > 0 ? `: ${ex.join(', ')}` : ''}\n`);
      }
      for (const [host, ex] of exports) {
        if (!members.some((m) => m.host === host)) process.stdout.write(`  ${host}: NOT registered, yet exports ${ex.join(', ')}\n`);
      }
      if (!health.ok) throw new Error('the store is not healthy');
    });
  });
}

async function withStore(flags: ClusterFlags, fn: (store: Store) => Promise<void>): Promise<number> {
  let store: Store | undefined;
  try {
    store = await openStore(flags);
    await fn(store);
    return EXIT.ok;
  } catch (err) {
    return reportError(err);
  } finally {
    await store?.close().catch(() => undefined);
  }
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}
