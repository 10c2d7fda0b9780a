import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { Agent, type AgentResult } from '../../src/agent/agent.js';
import { EVENT_LOOP_SAMPLE_MS, Metrics } from '../../src/api/metrics.js';
import perf_hooks from 'node:perf_hooks';
import { timedStore } from '../../src/api/timed-store.js';
import { operatorContext, operatorSigner } from '../../src/cli/operator.js';
import { keys } from '../../src/cluster/keys.js';
import { RemoteStore } from '../../src/cluster/remote-store.js';
import { StoreError, type Store } from '../../src/cluster/store.js';
import { createLogger } from '../../src/log.js';
import type { ServiceRecord } from '../../src/scheduler/records.js';
import { parseServiceText } from '../../src/scheduler/spec.js';
import { killWorkloads, liveWorkloads, waitFor, workloadSpec } from '../helpers/services.js';

/**
 * The agent's Prometheus metrics, read as Prometheus would: the exposition text of a real agent in this process,
 * parsed into samples. The engine's (resources by state, check/apply durations, drift repairs, watch events), the
 * cluster store's (request latency, lease, store up) and the controller's (leader, placements, plan steps, restarts,
 * recovery time) each come from a real run: a graph with files, a kv value, a scheduled service.
 */

interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

/** The exposition format's sample lines: `name{label="value",...} value`, with \\, \" and \n escaped in values. */
function parse(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/.exec(line);
    assert.ok(m !== null, `not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    const body = m[2] ?? '';
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/gy;
    let lm: RegExpExecArray | null;
    let consumed = 0;
    while ((lm = re.exec(body)) !== null) {
      labels[lm[1] ?? ''] = (lm[2] ?? '').replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
      consumed = re.lastIndex;
    }
    assert.equal(consumed, body.length, `labels not parsed: ${line}`);
    const raw = m[3] ?? '';
    // Go's ParseFloat, which Prometheus uses, takes NaN in any case (prom-client writes "Nan").
    const value = raw === '+Inf' ? Infinity : raw === '-Inf' ? -Infinity : /^nan$/i.test(raw) ? NaN : Number(raw);
    assert.ok(!Number.isNaN(value) || /^nan$/i.test(raw), `not a value: ${line}`);
    out.push({ name: m[1] ?? '', labels, value });
  }
  return out;
}

/** The value of the one sample `name` whose labels include `labels`; undefined when there is none. */
function value(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const hits = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  assert.ok(hits.length <= 1, `${name}${JSON.stringify(labels)} matches ${hits.length} samples`);
  return hits[0]?.value;
}

async function scrape(m: Metrics): Promise<Sample[]> {
  return parse(await m.text());
}

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await killWorkloads(d).catch(() => undefined);
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'bp-metrics-'));
  dirs.push(d);
  return d;
}

/** An agent in this process, running until stopped. */
async function startAgent(dir: string, graph: string, extra: Partial<ConstructorParameters<typeof Agent>[0]> = {}): Promise<{ agent: Agent; stop: () => Promise<void> }> {
  const file = join(dir, 'graph.yaml');
  await writeFile(file, graph);
  const agent = new Agent({ file, log: createLogger({ level: 'silent' }), convergedTimeout: -1, stateDir: join(dir, 'state'), hostname: 'solo', metrics: new Metrics({ version: 'test' }), ...extra });
  const done: Promise<AgentResult> = agent.run();
  return {
    agent,
    stop: async () => {
      await agent.stop();
      await done;
      await agent.close();
    },
  };
}

describe('metrics', { timeout: 180_000 }, () => {
  test('the engine: resources by kind and state, check and apply durations, a drift repair counted, watch events', async () => {
    const dir = await tempDir();
    const files = join(dir, 'files');
    await mkdir(files);
    // Already in place: its first run is a check that finds nothing to do.
    await writeFile(join(files, 'ready'), 'ready\n');
    const graph = `resources:
  - { kind: file, name: ${files}/ready, content: "ready\\n" }
  - { kind: file, name: ${files}/managed, content: "managed\\n" }
  - { kind: exec, name: broken, cmd: [/bin/false] }
  - { kind: file, name: ${files}/after-broken, content: "x\\n", require: ["exec[broken]"] }
`;
    const { agent, stop } = await startAgent(dir, graph);
    try {
      const m = agent.metrics as Metrics;
      let s = await waitFor('the graph settled', async () => {
        const x = await scrape(m);
        return value(x, 'backplane_graph_settled') === 1 ? x : undefined;
      });
      // Resources by kind and state: every state has a sample per kind, zeros included.
      assert.equal(value(s, 'backplane_resources', { kind: 'file', state: 'converged' }), 2);
      assert.equal(value(s, 'backplane_resources', { kind: 'file', state: 'blocked' }), 1);
      assert.equal(value(s, 'backplane_resources', { kind: 'file', state: 'failed' }), 0);
      assert.equal(value(s, 'backplane_resources', { kind: 'exec', state: 'failed' }), 1);
      assert.equal(value(s, 'backplane_resources', { kind: 'exec', state: 'converged' }), 0);
      // The file that was in place was checked; the missing one was applied; the exec failed.
      assert.ok((value(s, 'backplane_resource_check_duration_seconds_count', { kind: 'file' }) ?? 0) >= 1);
      assert.equal(value(s, 'backplane_resource_apply_duration_seconds_count', { kind: 'file', result: 'changed' }), 1);
      assert.equal(value(s, 'backplane_resource_apply_duration_seconds_count', { kind: 'exec', result: 'failed' }), 1);
      const le = value(s, 'backplane_resource_apply_duration_seconds_bucket', { kind: 'file', result: 'changed', le: '+Inf' });
      assert.equal(le, 1);
      // Creating the file was the first apply, not a repair of drift.
      assert.equal(value(s, 'backplane_resource_repairs_total', { kind: 'file' }), 0);
      const eventsBefore = value(s, 'backplane_watch_events_total', { kind: 'file' }) ?? 0;

      // Changed behind its back: its watch sees it, it writes the content back: one repair.
      await writeFile(join(files, 'managed'), 'tampered\n');
      s = await waitFor('the repair counted', async () => {
        const x = await scrape(m);
        return value(x, 'backplane_resource_repairs_total', { kind: 'file' }) === 1 && value(x, 'backplane_graph_settled') === 1 ? x : undefined;
      });
      assert.equal(value(s, 'backplane_resource_apply_duration_seconds_count', { kind: 'file', result: 'changed' }), 2);
      assert.ok((value(s, 'backplane_watch_events_total', { kind: 'file' }) ?? 0) > eventsBefore, 'the watch event was counted');
      assert.equal(value(s, 'backplane_resources', { kind: 'file', state: 'converged' }), 2);
      // Process metrics on the agent's own registry, and the build.
      assert.ok((value(s, 'process_resident_memory_bytes') ?? 0) > 0);
      assert.equal(value(s, 'backplane_build_info'), 1);
      // No cluster store used: no store or lease series.
      assert.equal(value(s, 'backplane_cluster_store_up'), undefined);
      assert.equal(value(s, 'backplane_lease_up'), undefined);
    } finally {
      await stop();
    }
  });

  test('the cluster store: request latency by operation, store up, lease up (a kv value opens the embedded store)', async () => {
    const dir = await tempDir();
    const { agent, stop } = await startAgent(dir, 'resources:\n  - { kind: kv, name: greeting, value: hello }\n');
    try {
      const s = await waitFor('the kv value published and the graph settled', async () => {
        const x = await scrape(agent.metrics as Metrics);
        return value(x, 'backplane_resources', { kind: 'kv', state: 'converged' }) === 1 && value(x, 'backplane_graph_settled') === 1 ? x : undefined;
      });
      assert.equal(value(s, 'backplane_cluster_store_up', { store: 'embedded' }), 1);
      assert.equal(value(s, 'backplane_lease_up', { store: 'embedded' }), 1);
      assert.equal(value(s, 'backplane_lease_losses_total'), 0);
      assert.ok((value(s, 'backplane_lease_renewal_age_seconds', { store: 'embedded' }) ?? -1) >= 0);
      // Registering (lease, put) and reading the cluster (list) went through the timed store.
      for (const op of ['lease', 'put', 'list']) {
        assert.ok((value(s, 'backplane_store_request_duration_seconds_count', { op }) ?? 0) >= 1, `${op} requests timed`);
      }
      const writes = ['put', 'txn'].reduce((n, op) => n + (value(s, 'backplane_store_request_duration_seconds_count', { op }) ?? 0), 0);
      assert.ok(writes >= 2, 'the node record and the kv value written');
      assert.equal(value(s, 'backplane_store_request_errors_total', { op: 'put' }), undefined);
    } finally {
      await stop();
    }
  });

  test('names follow Prometheus conventions: a HELP and TYPE each, counters end in _total, durations in _seconds', async () => {
    const m = new Metrics({ processMetrics: false });
    const text = await m.text();
    const types = new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((x) => [x[1] ?? '', x[2] ?? '']));
    const helps = new Set([...text.matchAll(/^# HELP (\S+) \S/gm)].map((x) => x[1]));
    assert.ok(types.size >= 25, `${types.size} metrics`);
    for (const [name, type] of types) {
      assert.match(name, /^backplane_[a-z_]+$/);
      assert.ok(helps.has(name), `${name} has a HELP`);
      if (type === 'counter') assert.match(name, /_total$/);
      else assert.doesNotMatch(name, /_total$/, `${name} is a ${type}`);
      if (type === 'histogram') assert.match(name, /_seconds$/);
    }
    assert.equal(m.contentType, 'text/plain; version=0.0.4; charset=utf-8');
  });

  test('the event loop is sampled once a second, not 10 times: an idle agent wakes for it once a second', async () => {
    // prom-client asks perf_hooks for the monitor when the default metrics are registered (Metrics' constructor).
    const resolutions: number[] = [];
    const real = perf_hooks.monitorEventLoopDelay;
    perf_hooks.monitorEventLoopDelay = (o) => {
      resolutions.push(o?.resolution ?? 10);
      return real(o);
    };
    let m: Metrics;
    try {
      m = new Metrics();
    } finally {
      perf_hooks.monitorEventLoopDelay = real;
    }
    assert.deepEqual(resolutions, [EVENT_LOOP_SAMPLE_MS]);
    assert.ok(EVENT_LOOP_SAMPLE_MS >= 1000, `${EVENT_LOOP_SAMPLE_MS} ms`);
    // Still exposed, with their meaning: the loop's delay at sampled moments.
    const names = new Set(parse(await m.text()).map((x) => x.name));
    for (const n of ['nodejs_eventloop_lag_seconds', 'nodejs_eventloop_lag_mean_seconds', 'nodejs_eventloop_lag_p99_seconds']) assert.ok(names.has(n), n);
  });

  test('a failed store request is counted as an error; one the agent aborted is not', async () => {
    const m = new Metrics({ processMetrics: false });
    const failing = {
      get: () => Promise.reject(new StoreError('unreachable', 'no etcd')),
      list: () => Promise.reject(new StoreError('aborted', 'stopping')),
    } as unknown as Store;
    const store = timedStore(failing, m);
    await assert.rejects(store.get('x'), /no etcd/);
    await assert.rejects(store.list('x'), /stopping/);
    const s = await scrape(m);
    assert.equal(value(s, 'backplane_store_request_errors_total', { op: 'get' }), 1);
    assert.equal(value(s, 'backplane_store_request_errors_total', { op: 'list' }), undefined);
    assert.equal(value(s, 'backplane_store_request_duration_seconds_count', { op: 'get' }), 1);
    assert.equal(value(s, 'backplane_store_request_duration_seconds_count', { op: 'list' }), 1);
  });

  test('the controller on the embedded store: leader, placements, plan steps, an instance restart, recovery from a crash loop', async () => {
    const dir = await tempDir();
    const flags = join(dir, 'flags');
    await mkdir(flags);
    const stateDir = join(dir, 'state');
    const { agent, stop } = await startAgent(dir, 'resources: []\n', { cluster: { etcd: [], cluster: 'default', labels: {}, services: true, capacity: { cpu: 4, memory: 2 ** 30 } } });
    let remote: RemoteStore | undefined;
    try {
      const m = agent.metrics as Metrics;
      await waitFor('this agent leads', async () => value(await scrape(m), 'backplane_controller_leader') === 1);
      // Deployed as `backplane deploy` does: a service record signed by this host, an operator (it holds the CA).
      remote = await RemoteStore.connect(stateDir);
      const ctx = await operatorContext(remote, { stateDir, cluster: 'default' });
      const signer = await operatorSigner(ctx);
      const yaml = workloadSpec('web', 1, flags, 'restart: { attempts: 1, interval: 1m, delay: 100ms }\nreschedule: { delay: 500ms, maxDelay: 1s }\n');
      const [spec] = parseServiceText(join(dir, 'web.yaml'), yaml);
      assert.ok(spec !== undefined);
      const record: ServiceRecord = { spec, source: 'web.yaml', deployedAt: new Date().toISOString() };
      await remote.put(keys.service('web'), signer.sign(keys.service('web'), JSON.stringify(record)));

      let s = await waitFor(
        'web healthy and its deploy plan complete',
        async () => {
          const x = await scrape(m);
          return value(x, 'backplane_instances', { state: 'healthy' }) === 1 && value(x, 'backplane_plans_finished_total', { kind: 'deploy', status: 'complete' }) === 1 ? x : undefined;
        },
        60_000,
      );
      assert.equal(value(s, 'backplane_placements_total', { result: 'placed' }), 1);
      assert.equal(value(s, 'backplane_placements_total', { result: 'unplaced' }), 0);
      assert.equal(value(s, 'backplane_unplaced_instances'), 0);
      assert.equal(value(s, 'backplane_plan_steps_total', { result: 'complete' }), 1);
      assert.equal(value(s, 'backplane_plan_steps_total', { result: 'error' }), 0);
      assert.ok((value(s, 'backplane_controller_passes_total', { result: 'ok' }) ?? 0) >= 1);
      assert.ok((value(s, 'backplane_controller_pass_duration_seconds_count') ?? 0) >= 1);
      assert.equal(value(s, 'backplane_recovery_duration_seconds_count', { reason: 'failed' }), undefined);
      // The controller's store requests go through the timed store too.
      assert.ok((value(s, 'backplane_store_request_duration_seconds_count', { op: 'txn' }) ?? 0) >= 1);

      // Killed once: its supervisor restarts it in place.
      const pid = async (): Promise<number | undefined> => (await liveWorkloads(flags)).get('web.0')?.[0];
      const first = await waitFor('the web process', pid);
      process.kill(first, 'SIGKILL');
      s = await waitFor('the restart counted', async () => {
        const x = await scrape(m);
        return value(x, 'backplane_instance_restarts_total', { service: 'web' }) === 1 ? x : undefined;
      });

      // A crash loop: it fails in place, the controller replaces it; once the fault is gone the replacement is healthy.
      await writeFile(join(flags, 'crash'), '');
      const second = await waitFor('the restarted web process', async () => {
        const p = await pid();
        return p !== undefined && p !== first ? p : undefined;
      });
      process.kill(second, 'SIGKILL');
      await waitFor('a replacement placed', async () => (value(await scrape(m), 'backplane_placements_total', { result: 'placed' }) ?? 0) >= 2, 60_000);
      await rm(join(flags, 'crash'));
      s = await waitFor(
        'the recovery measured',
        async () => {
          const x = await scrape(m);
          return value(x, 'backplane_recovery_duration_seconds_count', { reason: 'failed' }) === 1 ? x : undefined;
        },
        60_000,
      );
      assert.ok((value(s, 'backplane_recovery_duration_seconds_sum', { reason: 'failed' }) ?? -1) > 0);
      assert.equal(value(s, 'backplane_recovery_duration_seconds_count', { reason: 'lost' }), undefined);
    } finally {
      await remote?.close();
      await stop();
      await killWorkloads(flags);
    }
  });
});
