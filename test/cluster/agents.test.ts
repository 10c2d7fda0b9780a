import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { EtcdStore } from '../../src/cluster/etcd-store.js';
import { keys } from '../../src/cluster/keys.js';
import { runCli, startCli, type RunningCli } from '../helpers/cli.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../helpers/etcd.js';

/**
 * Distributed topology end to end: agents are separate `backplane run` processes, each with its own host name and
 * state directory, sharing a real 3-member etcd on loopback. Every host manages two private files, exports two
 * more, and collects every host's exports into its own purged directory.
 */

const HOSTS = ['a', 'b', 'c'] as const;

interface Agent {
  readonly host: string;
  readonly graph: string;
  readonly stateDir: string;
  cli: RunningCli;
}

interface Cluster {
  readonly name: string;
  readonly root: string;
  /** A join token (file) made on host a, which holds the cluster's CA: the other hosts join with it. */
  readonly tokenFile: string;
  readonly agents: Map<string, Agent>;
  /** The content version each host exports (bumped by `edit`). */
  readonly version: Map<string, number>;
}

let etcd: EtcdCluster;
let work: string;
let clusters = 0;
const running = new Set<RunningCli>();

const exists = (p: string): Promise<boolean> => stat(p).then(() => true, () => false);
const read = (p: string): Promise<string | undefined> => readFile(p, 'utf8').catch(() => undefined);

function graphYaml(root: string, host: string, version: number): string {
  const d = join(root, host);
  return `resources:
  - { kind: file, name: ${d}/private-1, content: "p1 ${host}\\n" }
  - { kind: file, name: ${d}/private-2, content: "p2 ${host}\\n" }
  - { kind: file, name: ${d}/exported-1, content: "e1 from ${host} v${version}\\n", export: true }
  - { kind: file, name: ${d}/exported-2, content: "e2 from ${host} v${version}\\n", export: true }
  - { kind: file, name: ${d}/collected, type: directory, purge: true }
collect:
  - { kind: file, set: { path: "${d}/collected/{host}-{basename}" } }
`;
}

/** Writes a graph file the way an editor that saves atomically does, so an agent never reads half of it. */
async function writeGraph(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp`;
  await writeFile(tmp, text);
  await rename(tmp, path);
}

async function newCluster(): Promise<Cluster> {
  const name = `t${++clusters}`;
  const root = join(work, name);
  for (const h of HOSTS) await mkdir(join(root, h), { recursive: true });
  // Host a holds the cluster's CA; b and c join with a token that a's agent honours.
  const stateA = join(root, 'state-a');
  const init = await runCli(['cluster', 'init', '--etcd', endpoints(), '--cluster', name, '--state-dir', stateA, '--hostname', 'a']);
  assert.equal(init.code, 0, init.stderr);
  const token = await runCli(['hosts', 'token', '--etcd', endpoints(), '--cluster', name, '--state-dir', stateA, '--uses', '20']);
  assert.equal(token.code, 0, token.stderr);
  const tokenFile = join(root, 'join-token');
  await writeFile(tokenFile, token.stdout, { mode: 0o600 });
  return { name, root, tokenFile, agents: new Map(), version: new Map() };
}

function endpoints(): string {
  return etcd.endpoints.join(',');
}

async function startAgent(c: Cluster, host: string): Promise<Agent> {
  const graph = join(c.root, `${host}.yaml`);
  if (!(await exists(graph))) {
    c.version.set(host, 0);
    await writeGraph(graph, graphYaml(c.root, host, 0));
  }
  const stateDir = join(c.root, `state-${host}`);
  const join_ = host === 'a' ? [] : ['--join-token-file', c.tokenFile];
  const cli = startCli(['run', '--file', graph, '--hostname', host, '--etcd', endpoints(), '--cluster', c.name, '--state-dir', stateDir, ...join_], {
    timeoutMs: 300_000,
  });
  running.add(cli);
  void cli.exited.then(() => running.delete(cli));
  const agent = { host, graph, stateDir, cli };
  c.agents.set(host, agent);
  return agent;
}

function cli(c: Cluster, host: string): RunningCli {
  const a = c.agents.get(host);
  if (a === undefined) throw new Error(`no agent ${host}`);
  return a.cli;
}

async function stopAgent(cli: RunningCli, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (cli.proc.exitCode !== null || cli.proc.signalCode !== null) return;
  const killer = setTimeout(() => cli.proc.kill('SIGKILL'), 10_000);
  cli.proc.kill(signal);
  await cli.exited;
  clearTimeout(killer);
}

async function stopAll(c: Cluster): Promise<void> {
  await Promise.all([...c.agents.values()].map((a) => stopAgent(a.cli)));
}

/** Bumps what `host` exports; every collector must then hold the new content. */
async function edit(c: Cluster, host: string): Promise<void> {
  const v = (c.version.get(host) ?? 0) + 1;
  c.version.set(host, v);
  await writeGraph(join(c.root, `${host}.yaml`), graphYaml(c.root, host, v));
}

/** What `host`'s directory should hold when `live` are the hosts whose exports it sees. */
function expected(c: Cluster, host: string, live: readonly string[]): Map<string, string> {
  const d = join(c.root, host);
  const m = new Map<string, string>([
    [join(d, 'private-1'), `p1 ${host}\n`],
    [join(d, 'private-2'), `p2 ${host}\n`],
  ]);
  for (const x of live) {
    const v = c.version.get(x) ?? 0;
    for (const i of [1, 2]) m.set(join(d, 'collected', `${x}-exported-${i}`), `e${i} from ${x} v${v}\n`);
  }
  return m;
}

/** Undefined when `host` holds exactly what it should, else what is wrong (for the timeout message). */
async function mismatch(c: Cluster, host: string, live: readonly string[]): Promise<string | undefined> {
  const want = expected(c, host, live);
  const d = join(c.root, host);
  const present = [
    ...(await readdir(d).catch(() => [])).filter((n) => n.startsWith('private-')).map((n) => join(d, n)),
    ...(await readdir(join(d, 'collected')).catch(() => [])).map((n) => join(d, 'collected', n)),
  ];
  const extra = present.filter((p) => !want.has(p));
  if (extra.length > 0) return `${host} has extra ${extra.join(', ')}`;
  for (const [p, content] of want) {
    const got = await read(p);
    if (got !== content) return `${host}: ${p} is ${JSON.stringify(got)}, want ${JSON.stringify(content)}`;
  }
  return undefined;
}

async function poll(what: string, timeoutMs: number, check: () => Promise<string | undefined>): Promise<number> {
  const t0 = performance.now();
  let last: string | undefined = 'not checked';
  while (performance.now() - t0 < timeoutMs) {
    last = await check();
    if (last === undefined) return performance.now() - t0;
    await sleep(20);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}: ${last}`);
}

/** Waits until every host in `on` holds the state for `live`; resolves with the time it took. */
function converged(c: Cluster, on: readonly string[], live: readonly string[], timeoutMs = 15_000): Promise<number> {
  return poll(`${on.join(',')} to converge on exports of ${live.join(',')}`, timeoutMs, async () => {
    for (const h of on) {
      const m = await mismatch(c, h, live);
      if (m !== undefined) return m;
    }
    return undefined;
  });
}

async function startThree(c: Cluster): Promise<void> {
  for (const h of HOSTS) {
    const a = await startAgent(c, h);
    await a.cli.waitFor(/joined cluster/, 20_000);
  }
  await converged(c, HOSTS, HOSTS);
}

/** A failure with what each agent said, which is what tells why a host did not converge. */
function withLogs(c: Cluster, err: unknown): Error {
  const logs = [...c.agents.values()].map((a) => `--- agent ${a.host} (last lines):\n${a.cli.output().split('\n').slice(-30).join('\n')}`);
  const e = err instanceof Error ? err : new Error(String(err));
  e.message = `${e.message}\n${logs.join('\n')}`;
  return e;
}

function report(t: TestContext, what: string, ms: number): void {
  t.diagnostic(`${what}: ${Math.round(ms)} ms`);
}

async function leaderIndex(): Promise<number> {
  for (const [i, m] of etcd.members.entries()) {
    if (m.proc === undefined) continue;
    const res = await fetch(`${m.clientUrl}/v3/maintenance/status`, { method: 'POST', body: '{}', signal: AbortSignal.timeout(2000) });
    const body = (await res.json()) as { header: { member_id: string }; leader: string };
    if (body.header.member_id === body.leader) return i;
  }
  throw new Error('no etcd member is the leader');
}

describe('agents share state through etcd (real processes)', { skip: !etcdAvailable() && 'etcd is not installed' }, () => {
  before(async () => {
    etcd = await startEtcd({ members: 3 });
    work = await mkdtemp(join(tmpdir(), 'bp-agents-'));
  });

  after(async () => {
    await Promise.all([...running].map((cli) => stopAgent(cli, 'SIGKILL')));
    await etcd?.stop();
    if (work !== undefined) await rm(work, { recursive: true, force: true });
  });

  test('three hosts export and collect; each converges to its own files plus all six exports; a stopped host’s exports go away', async (t) => {
    const c = await newCluster();
    try {
      let lastStart = 0;
      for (const h of HOSTS) {
        lastStart = performance.now();
        const a = await startAgent(c, h);
        await a.cli.waitFor(/joined cluster/, 20_000);
      }
      await converged(c, HOSTS, HOSTS);
      const startup = performance.now() - lastStart;
      report(t, 'all three converged after the last agent was started', startup);
      assert.ok(startup < 5000, `took ${startup} ms`);

      // A changed export re-renders every collector, and only the two changed resources re-run there.
      const t0 = performance.now();
      await edit(c, 'a');
      await converged(c, HOSTS, HOSTS);
      report(t, "a's changed export applied everywhere", performance.now() - t0);
      for (const h of HOSTS) {
        const out = cli(c, h).output();
        assert.match(out, /graph swapped: 0 added, 0 removed, 2 changed, 7 unchanged/, `${h}:\n${out}`);
        assert.doesNotMatch(out, /(private-\d|collected|[bc]\/exported-\d)\]: content changed/, `${h}:\n${out}`);
      }

      const stopped = performance.now();
      await stopAgent(cli(c, 'c'));
      await converged(c, ['a', 'b'], ['a', 'b'], 10_000);
      report(t, "c's exports removed from a and b after SIGTERM", performance.now() - stopped);
      // The purge is logged, so a user sees why the files went.
      assert.match(cli(c, 'a').output(), /collected\]: purged .*c-exported-1/);
    } catch (err) {
      throw withLogs(c, err);
    } finally {
      await stopAll(c);
    }
  });

  test('kill -9: the dead host’s exports vanish within the lease TTL; restarted, it registers once and its exports return', async (t) => {
    const c = await newCluster();
    try {
      await startThree(c);
      await stopAgent(cli(c, 'c'), 'SIGKILL');
      const gone = await converged(c, ['a', 'b'], ['a', 'b'], 10_000);
      report(t, "c's exports removed from a and b after kill -9 (lease TTL 3 s)", gone);
      assert.ok(gone < 6000, `took ${gone} ms`);

      const restarted = await startAgent(c, 'c');
      await restarted.cli.waitFor(/joined cluster/, 20_000);
      await converged(c, HOSTS, HOSTS);
      const r = await runCli(['cluster', 'members', '--etcd', endpoints(), '--cluster', c.name, '--state-dir', join(c.root, 'state-a'), '--json']);
      assert.equal(r.code, 0, r.stderr);
      const members = JSON.parse(r.stdout) as { host: string }[];
      assert.deepEqual(members.map((m) => m.host).sort(), ['a', 'b', 'c']);
      // Quiet for a lease TTL: the old lease expiring must not take the re-published keys with it.
      await sleep(3500);
      await converged(c, HOSTS, HOSTS, 1000);
    } catch (err) {
      throw withLogs(c, err);
    } finally {
      await stopAll(c);
    }
  });

  test('one of three etcd members killed (the leader): agents keep converging; restarted, it has everything', async (t) => {
    const c = await newCluster();
    const victim = await leaderIndex();
    try {
      await startThree(c);
      await etcd.kill(victim);
      const t0 = performance.now();
      await edit(c, 'a');
      report(t, 'an export change made as the etcd leader died, applied everywhere', await converged(c, HOSTS, HOSTS));
      assert.ok(performance.now() - t0 < 15_000);
      // With two members of three the cluster has a new leader and works as before.
      await edit(c, 'c');
      report(t, 'the next change, on the two remaining members', await converged(c, HOSTS, HOSTS));

      await etcd.restart(victim);
      await edit(c, 'b');
      await converged(c, HOSTS, HOSTS);
      // The restarted member alone serves the whole cluster's state.
      const r = await runCli(['cluster', 'status', '--etcd', etcd.members[victim]!.clientUrl, '--cluster', c.name, '--state-dir', join(c.root, 'state-a'), '--json']);
      assert.equal(r.code, 0, r.stderr);
      const status = JSON.parse(r.stdout) as { members: { host: string }[]; exports: Record<string, string[]> };
      assert.deepEqual(status.members.map((m) => m.host).sort(), ['a', 'b', 'c']);
      for (const h of HOSTS) assert.equal(status.exports[h]?.length, 2, `exports of ${h}`);
    } catch (err) {
      throw withLogs(c, err);
    } finally {
      if (etcd.members[victim]?.proc === undefined) await etcd.restart(victim);
      await stopAll(c);
    }
  });

  test('all of etcd down: agents keep enforcing locally, say the store is unreachable, and resynchronise when it is back', async (t) => {
    const c = await newCluster();
    let down = false;
    try {
      await startThree(c);
      await Promise.all(etcd.members.map((_, i) => etcd.kill(i)));
      down = true;
      for (const h of HOSTS) await cli(c, h).waitFor(/cluster store unreachable/, 20_000);

      // Local enforcement goes on from the last known graph, collected files included.
      const priv = join(c.root, 'a', 'private-1');
      await rm(priv);
      await rm(join(c.root, 'a', 'collected', 'b-exported-1'));
      await converged(c, HOSTS, HOSTS, 5000);
      // A change exported during the outage waits for the store (even a's own collected copy comes through it).
      await edit(c, 'a');
      await sleep(500);
      assert.equal(await read(join(c.root, 'b', 'collected', 'a-exported-1')), 'e1 from a v0\n');

      const t0 = performance.now();
      await Promise.all(etcd.members.map((_, i) => etcd.restart(i, { wait: false })));
      await Promise.all(etcd.members.map((_, i) => etcd.waitHealthy(i)));
      down = false;
      report(t, 'etcd healthy again after a full outage', performance.now() - t0);
      const ms = await converged(c, HOSTS, HOSTS, 20_000);
      report(t, 'the change made during the outage applied everywhere after etcd was healthy', ms);
      await cli(c, 'a').waitFor(/cluster store reachable again/, 10_000);
    } catch (err) {
      throw withLogs(c, err);
    } finally {
      if (down) {
        await Promise.all(etcd.members.map((m, i) => (m.proc === undefined ? etcd.restart(i, { wait: false }) : Promise.resolve())));
        await Promise.all(etcd.members.map((_, i) => etcd.waitHealthy(i)));
      }
      await stopAll(c);
    }
  });

  test('an agent started while etcd is down runs its local graph at once and joins when etcd is back', async (t) => {
    const c = await newCluster();
    let down = false;
    try {
      await Promise.all(etcd.members.map((_, i) => etcd.kill(i)));
      down = true;
      const a = await startAgent(c, 'a');
      await a.cli.waitFor(/cannot reach the cluster store .*running the local graph/, 20_000);
      // Local resources converge without the store.
      await poll('a’s private files without etcd', 10_000, async () =>
        (await read(join(c.root, 'a', 'private-1'))) === 'p1 a\n' ? undefined : 'private-1 missing',
      );
      assert.equal(a.cli.proc.exitCode, null, 'the agent keeps running');

      const t0 = performance.now();
      await Promise.all(etcd.members.map((_, i) => etcd.restart(i, { wait: false })));
      await Promise.all(etcd.members.map((_, i) => etcd.waitHealthy(i)));
      down = false;
      await a.cli.waitFor(/joined cluster/, 30_000);
      // Joined: its exports are published and collected back (by itself, the only host here).
      const ms = await converged(c, ['a'], ['a'], 30_000);
      report(t, 'agent started during an outage: joined and converged after etcd was healthy', performance.now() - t0);
      assert.ok(ms >= 0);
    } catch (err) {
      throw withLogs(c, err);
    } finally {
      if (down) {
        await Promise.all(etcd.members.map((m, i) => (m.proc === undefined ? etcd.restart(i, { wait: false }) : Promise.resolve())));
        await Promise.all(etcd.members.map((_, i) => etcd.waitHealthy(i)));
      }
      await stopAll(c);
    }
  });

  test('malformed or hostile data under the cluster prefix is logged and never applied; valid exports keep working', async () => {
    const c = await newCluster();
    const store = new EtcdStore({ endpoints: etcd.endpoints, cluster: c.name });
    try {
      await startThree(c);
      const evil = (name: string): string => keys.exported('evil', 'file', name);
      // Unsigned data from a host nobody approved: each kind of junk is refused before it is even parsed as an
      // export (test/cluster/trust.test.ts forges signatures, replays and impersonates approved hosts).
      const hostile: [string, string, RegExp][] = [
        ['exported/junk', '{}', /ignoring cluster data at exported\/junk: not an exported\/<host>\/<kind>\/<name> key/],
        [evil('/tmp/not-json'), '{"kind": "file", ', /ignoring cluster data at exported\/evil\/.*: host "evil" is not approved/],
        [
          evil('/tmp/claimed'),
          JSON.stringify({ kind: 'file', name: '/tmp/other', params: { content: 'x' }, to: '*' }),
          /ignoring cluster data at exported\/evil\/.*: host "evil" is not approved/,
        ],
        [
          keys.exported('../..', 'file', 'escape'),
          JSON.stringify({ kind: 'file', name: 'escape', params: { content: 'x' }, to: '*' }),
          /ignoring cluster data at exported\/\.\.%2F\.\.\/file\/escape: "\.\.\/\.\." is not a valid host name/,
        ],
        [
          keys.exported('b', 'file', join(c.root, 'a', 'private-1')),
          JSON.stringify({ kind: 'file', name: join(c.root, 'a', 'private-1'), params: { content: 'hijacked' }, to: ['a'] }),
          /ignoring cluster data at exported\/b\/.*private-1: value is not a signed record/,
        ],
      ];
      for (const [key, value] of hostile) await store.put(key, value);
      for (const [, , line] of hostile) await cli(c, 'a').waitFor(line, 10_000);
      for (const h of ['b', 'c']) await cli(c, h).waitFor(/ignoring cluster data at exported\/junk/, 10_000);

      // Valid exports keep flowing past the junk.
      await edit(c, 'c');
      await converged(c, HOSTS, HOSTS);
      // Nothing hostile was written anywhere: no extra collected files (checked above), no escape, no hijack.
      for (const h of HOSTS) {
        assert.equal(await exists(join(c.root, h, '..-escape')), false);
        assert.doesNotMatch(cli(c, h).output(), /file\[(relative|escape|\/tmp\/[a-z-]+)\]: created/);
      }
      assert.equal(await read(join(c.root, 'a', 'private-1')), 'p1 a\n');
    } catch (err) {
      throw withLogs(c, err);
    } finally {
      await store.close();
      await stopAll(c);
    }
  });

  test('`cluster members` and `cluster status` list every host once, alive, with its exports (and --json parses)', async () => {
    const c = await newCluster();
    try {
      await startThree(c);
      const common = ['--etcd', endpoints(), '--cluster', c.name, '--state-dir', join(c.root, 'state-a')];
      const members = await runCli(['cluster', 'members', ...common]);
      assert.equal(members.code, 0, members.stderr);
      for (const h of HOSTS) assert.equal(members.stdout.split('\n').filter((l) => new RegExp(`^${h}\\s+alive\\s`).test(l)).length, 1, members.stdout);

      const status = await runCli(['cluster', 'status', ...common]);
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, /^store: etcd, healthy/);
      assert.match(status.stdout, /^hosts: 3$/m);
      for (const h of HOSTS) {
        const line = status.stdout.split('\n').filter((l) => l.startsWith(`  ${h}: `));
        assert.equal(line.length, 1, status.stdout);
        assert.match(line[0]!, new RegExp(`alive, exports 2: file\\[.*/${h}/exported-1\\], file\\[.*/${h}/exported-2\\]`));
      }

      const json = await runCli(['cluster', 'status', ...common, '--json']);
      assert.equal(json.code, 0, json.stderr);
      const parsed = JSON.parse(json.stdout) as { store: { kind: string; ok: boolean }; members: { host: string; record: { host: string } }[]; exports: Record<string, string[]> };
      assert.deepEqual(parsed.store.kind, 'etcd');
      assert.equal(parsed.store.ok, true);
      assert.deepEqual(parsed.members.map((m) => m.host).sort(), ['a', 'b', 'c']);
      assert.deepEqual(parsed.members.map((m) => m.record.host).sort(), ['a', 'b', 'c']);
      assert.deepEqual(Object.keys(parsed.exports).sort(), ['a', 'b', 'c']);

      const mj = await runCli(['cluster', 'members', ...common, '--json']);
      assert.deepEqual((JSON.parse(mj.stdout) as { host: string }[]).map((m) => m.host).sort(), ['a', 'b', 'c']);
    } catch (err) {
      throw withLogs(c, err);
    } finally {
      await stopAll(c);
    }
  });
});
