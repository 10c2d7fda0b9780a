import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { runCli, startCli, type RunningCli } from '../helpers/cli.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../helpers/etcd.js';

/**
 * Two real agents on one etcd member: `export: [b]` reaches b only, `--label` is published with the host, and
 * `--lease-ttl` is the TTL of the lease its membership hangs on. Lean on purpose (one member, two agents): the
 * three-host topology is test/cluster/agents.test.ts.
 */

let etcd: EtcdCluster;
let work: string;
const running = new Set<RunningCli>();

async function until(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}

const list = (d: string): Promise<string[]> => readdir(d).then((n) => n.sort(), () => []);

/** The TTL etcd granted to a lease (decimal id, as `cluster members --json` prints it), asked of etcd with etcdctl. */
function grantedTtl(endpoint: string, id: string): number {
  const ttl = execFileSync('etcdctl', ['--endpoints', endpoint, '-w', 'json', 'lease', 'timetolive', BigInt(id).toString(16)], {
    env: { ...process.env, ETCDCTL_API: '3' },
  }).toString();
  const granted = /"granted-ttl":(\d+)/.exec(ttl)?.[1];
  assert.ok(granted !== undefined, ttl);
  return Number(granted);
}

describe('exports to named hosts, labels and lease TTL (real agents, real etcd)', { skip: !etcdAvailable() && 'etcd is not installed' }, () => {
  before(async () => {
    etcd = await startEtcd({ members: 1 });
    work = await mkdtemp(join(tmpdir(), 'bp-named-'));
  });

  after(async () => {
    for (const cli of running) cli.proc.kill('SIGKILL');
    await Promise.all([...running].map((cli) => cli.exited));
    await etcd?.stop();
    if (work !== undefined) await rm(work, { recursive: true, force: true });
  });

  test('export: [b] is collected by b alone; export: true by both; labels and the lease TTL are what the flags say', async () => {
    const ep = etcd.endpoints.join(',');
    const cluster = 'named';
    const stateA = join(work, 'state-a');
    const init = await runCli(['cluster', 'init', '--etcd', ep, '--cluster', cluster, '--state-dir', stateA, '--hostname', 'a']);
    assert.equal(init.code, 0, init.stderr);
    const token = await runCli(['hosts', 'token', '--etcd', ep, '--cluster', cluster, '--state-dir', stateA]);
    assert.equal(token.code, 0, token.stderr);
    const tokenFile = join(work, 'token');
    await writeFile(tokenFile, token.stdout, { mode: 0o600 });

    const graph = (host: string, exports: string): string => {
      const d = join(work, host);
      return `resources:
${exports}  - { kind: file, name: ${d}/in, type: directory, purge: true }
collect:
  - { kind: file, set: { path: "${d}/in/{host}-{basename}" } }
`;
    };
    for (const h of ['a', 'b']) await mkdir(join(work, h), { recursive: true });
    const exportsOfA = `  - { kind: file, name: /x/to-b, content: "for b\\n", export: [b] }
  - { kind: file, name: /x/to-all, content: "for all\\n", export: true }
`;
    await writeFile(join(work, 'a.yaml'), graph('a', exportsOfA));
    await writeFile(join(work, 'b.yaml'), graph('b', ''));

    const start = (host: string, extra: readonly string[]): RunningCli => {
      const cli = startCli(['run', '--file', join(work, `${host}.yaml`), '--hostname', host, '--etcd', ep, '--cluster', cluster, '--state-dir', join(work, `state-${host}`), ...extra], {
        timeoutMs: 120_000,
      });
      running.add(cli);
      return cli;
    };
    const a = start('a', []);
    const b = start('b', ['--join-token-file', tokenFile, '--label', 'role=web', '--label', 'zone=z1', '--lease-ttl', '7s']);
    try {
      await until('b to collect both exports', 20_000, async () => (await list(join(work, 'b', 'in'))).join() === 'a-to-all,a-to-b');
      // a collects its own export to everyone, which shows its collect rule works; the one named for b never comes.
      await until('a to collect its export to everyone', 10_000, async () => (await list(join(work, 'a', 'in'))).includes('a-to-all'));
      await sleep(500);
      assert.deepEqual(await list(join(work, 'a', 'in')), ['a-to-all'], 'a collected an export meant for b only');

      const members = await runCli(['cluster', 'members', '--etcd', ep, '--cluster', cluster, '--state-dir', stateA, '--json']);
      assert.equal(members.code, 0, members.stderr);
      const hosts = JSON.parse(members.stdout) as { host: string; verified: boolean; lease?: string; record?: { labels: Record<string, string> } }[];
      const hb = hosts.find((h) => h.host === 'b');
      assert.ok(hb?.verified === true, members.stdout);
      assert.deepEqual(hb.record?.labels, { role: 'web', zone: 'z1' });
      assert.deepEqual(hosts.find((h) => h.host === 'a')?.record?.labels, {});

      const lease = (host: string): string => hosts.find((h) => h.host === host)?.lease ?? assert.fail(`no lease for ${host}: ${members.stdout}`);
      assert.equal(grantedTtl(etcd.endpoints[0] ?? '', lease('b')), 7, 'b membership lease');
      assert.equal(grantedTtl(etcd.endpoints[0] ?? '', lease('a')), 3, 'a keeps the default');
    } catch (err) {
      const e = err instanceof Error ? err : new Error(String(err));
      e.message += `\n--- a:\n${a.output().slice(-3000)}\n--- b:\n${b.output().slice(-3000)}`;
      throw e;
    } finally {
      for (const cli of [a, b]) cli.proc.kill('SIGTERM');
      await Promise.all([a.exited, b.exited]);
    }
  });
});
