/**
 * Redis failover time (#11 Proof): from kill -9 of the primary's redis-server to the first write accepted through the
 * discovery entry `cache.primary`, over N kills (default 20), on three agents and a real etcd, measured by a client
 * that writes every 5 ms to whatever `cache.primary` names (read from the store by the agents' own Discovery).
 *
 *   node --import tsx bench/failover-redis.ts [--kills 20]
 *
 * Between kills it waits until the object has settled again (a primary and 2 linked replicas, the old primary among
 * them), so each kill starts from the steady state. Printed beside Redis Sentinel's default `down-after-milliseconds`
 * (30 s: Sentinel does not even start a failover before then). Exits 1 past a 2 s median or if two masters were ever
 * sampled.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureBuilt } from '../test/helpers/cli.js';
import { startEtcd } from '../test/helpers/etcd.js';
import { deploy, instances, newCluster, startAgent, stopCluster, waitFor } from '../test/helpers/services.js';
import { appOf, killRedis, median, openDiscovery, percentile, primaryOf, RedisLeftovers, RoleSampler, Writer, type AppJson } from '../test/backplanes/redis/cluster.js';

const arg = (name: string, dflt: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const KILLS = arg('kills', 20);
const SENTINEL_DOWN_AFTER_MS = 30_000;
const AIM_MS = 2000;

ensureBuilt();
const work = await mkdtemp(join(tmpdir(), 'bp-bench-redis-'));
const etcd = await startEtcd({ members: 1 });
const c = await newCluster(join(work, 'c'), etcd.endpoints, 'redisbench');
const leftovers = new RedisLeftovers();
let failed = false;
try {
  for (const h of ['h1', 'h2', 'h3']) await startAgent(c, h, { capacity: 'cpu=2,memory=1G' });
  const r = await deploy(c, 'cache', 'kind: redis\nname: cache\nreplicas: 2\nmemory: 64M\n');
  if (r.code !== 0) throw new Error(`deploy: ${r.stdout}${r.stderr}`);
  const settled = (a: AppJson): boolean => a.fields['replicas linked'] === 2 && (a.discovery['primary']?.length ?? 0) === 1 && a.members.every((m) => m.report?.['link'] !== 'down');
  await waitFor('cache settled', async () => settled(await appOf(c)), 60_000);
  const ports = (await instances(c, 'cache')).map((m) => ({ id: m.id, port: m.ports['redis'] ?? 0 }));
  const d = await openDiscovery(c);
  const sampler = new RoleSampler(() => ports);
  const writer = new Writer(d.discovery, 5);
  const rows: { ms: number; promotedMs: number; writableMs: number; from: string; to: string }[] = [];
  try {
    await waitFor('writes', async () => writer.accepted.length > 20);
    for (let k = 1; k <= KILLS; k++) {
      const old = await waitFor('a primary in discovery', async () => primaryOf(d.discovery));
      for (const p of ports) await leftovers.record(p.port);
      const killedAt = await killRedis(old.port);
      const first = await waitFor('a write on a new primary', async () => writer.accepted.find((w) => w.at > killedAt && w.to !== old.id), 30_000, 5);
      const app = await waitFor('settled again', async () => {
        const a = await appOf(c);
        return settled(a) && a.lastFailover?.from === old.id && a.lastFailover.timeline.some((e) => /rejoined/.test(e.message)) ? a : undefined;
      }, 60_000);
      const tl = app.lastFailover?.timeline ?? [];
      const at = (re: RegExp): number => (tl.find((e) => re.test(e.message))?.at ?? NaN) - killedAt;
      const row = { ms: first.at - killedAt, promotedMs: at(/^promoted/), writableMs: at(/reports primary/), from: old.id, to: first.to };
      rows.push(row);
      process.stdout.write(`kill ${String(k).padStart(2)}: ${row.ms} ms to the first write through cache.primary (promoted +${row.promotedMs} ms, primary +${row.writableMs} ms) ${row.from} -> ${row.to}\n`);
      // Let the new steady state be steady for a moment.
      await new Promise((res) => setTimeout(res, 500));
    }
  } finally {
    await writer.stop();
    await sampler.stop();
    await d.close();
  }
  const ms = rows.map((r) => r.ms);
  const line = (label: string, xs: number[]): string => `${label.padEnd(44)} median ${String(Math.round(median(xs))).padStart(6)} ms   p99 ${String(Math.round(percentile(xs, 99))).padStart(6)} ms`;
  process.stdout.write(`\nRedis failover over ${rows.length} kills (3 agents, 1-member etcd, 2 replicas, a client writing every 5 ms):\n`);
  process.stdout.write(`${line('kill -9 -> replica told to promote', rows.map((r) => r.promotedMs))}\n`);
  process.stdout.write(`${line('kill -9 -> it reports primary', rows.map((r) => r.writableMs))}\n`);
  process.stdout.write(`${line('kill -9 -> first write through cache.primary', ms)}\n`);
  process.stdout.write(`${'Redis Sentinel default down-after-milliseconds'.padEnd(44)} ${SENTINEL_DOWN_AFTER_MS} ms before a failover even starts\n`);
  process.stdout.write(`role samples: ${sampler.samples} (every ~20 ms), two masters at once: ${sampler.violations.length}\n`);
  if (sampler.violations.length > 0) {
    failed = true;
    process.stdout.write(`FAIL: two masters: ${sampler.violations.slice(0, 5).join('; ')}\n`);
  }
  if (median(ms) > AIM_MS) {
    failed = true;
    process.stdout.write(`FAIL: median ${median(ms)} ms is past the ${AIM_MS} ms aim\n`);
  }
} catch (err) {
  failed = true;
  process.stdout.write(`FAIL: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
} finally {
  await stopCluster(c);
  leftovers.killAll();
  await etcd.stop();
  await rm(work, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
