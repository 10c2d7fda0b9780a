import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { agentCgroups, removeCgroups } from '../helpers/cgroups.js';
import { ensureBuilt, ROOT } from '../helpers/cli.js';

/**
 * The self-scaling worker (examples/worker/), run as a reader would through its walkthrough: one real agent on the
 * embedded store, the queue and the worker deployed with the CLI in dist/, the workers' instance 0 asking for more
 * or fewer of itself through the instance API. Checked through the operator's own view (`service worker --json`,
 * `plan worker --json`) and the queue: 35 jobs -> 4 workers by a scale plan (same version), drained -> 1 worker,
 * every job done once, and a request for 9 refused with the bound named.
 */

const SCRIPT = join(ROOT, 'examples', 'worker', 'walkthrough.sh');
/** Clear of the script's defaults (24650, 24700-24799) and the other walkthroughs' tests (24400-24699, 24900-24999). */
const PORTS_FROM = 25100;
const QUEUE_PORT = 25090;

function missing(): string | false {
  if (process.getuid?.() !== 0) return 'needs root';
  try {
    execFileSync('sh', ['-c', 'command -v setsid && command -v pgrep'], { stdio: 'ignore' });
    return false;
  } catch {
    return 'needs setsid and pgrep';
  }
}

interface Run {
  readonly code: number | null;
  readonly out: string;
}

interface ServiceJson {
  readonly scale?: { readonly count: number; readonly operatorCount: number; readonly scaledBy?: string; readonly reason?: string; readonly bounds: { min: number; max: number } | null };
  readonly instances: readonly { readonly id: string; readonly index: number; readonly version: string; readonly state: string }[];
  readonly events: readonly { readonly message: string }[];
}

describe('examples/worker: a worker service that scales itself on a queue', { skip: missing(), timeout: 300_000 }, () => {
  let base = '';
  let dir = '';

  const run = (args: readonly string[], timeoutMs = 120_000): Promise<Run> =>
    new Promise((resolve) => {
      const p = spawn('bash', [SCRIPT, ...args], {
        cwd: ROOT,
        env: { ...process.env, BACKPLANE_WORKER_DIR: dir, PORTS_FROM: String(PORTS_FROM), QUEUE_PORT: String(QUEUE_PORT) },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      p.stdout.on('data', (d: Buffer) => (out += d.toString()));
      p.stderr.on('data', (d: Buffer) => (out += d.toString()));
      const timer = setTimeout(() => p.kill('SIGINT'), timeoutMs);
      const t0 = Date.now();
      p.on('close', (code) => {
        clearTimeout(timer);
        if (args[0] !== 'bp') process.stderr.write(`# walkthrough.sh ${args.join(' ')}: ${((Date.now() - t0) / 1000).toFixed(1)}s\n`);
        resolve({ code, out });
      });
    });

  const json = async <T>(args: readonly string[]): Promise<T> => {
    const r = await run(['bp', ...args], 30_000);
    assert.equal(r.code, 0, r.out);
    return JSON.parse(r.out.slice(r.out.indexOf('{'))) as T;
  };
  const service = (): Promise<ServiceJson> => json<ServiceJson>(['service', 'worker', '--json', '--events', '50']);
  const queue = async (): Promise<{ length: number; inFlight: number; done: number; byWorker: Record<string, number> }> =>
    (await (await fetch(`http://127.0.0.1:${QUEUE_PORT}/length`)).json()) as { length: number; inFlight: number; done: number; byWorker: Record<string, number> };

  before(async () => {
    ensureBuilt();
    base = await mkdtemp(join(tmpdir(), 'bp-worker-walkthrough-'));
    dir = join(base, 'w');
  });

  after(async () => {
    // down ends the instances by their fence, which leaves their cgroups: named here while the state is still there.
    const cgroups = await agentCgroups(base);
    const r = await run(['down'], 60_000);
    await removeCgroups(cgroups);
    assert.equal(r.code, 0, r.out);
    assert.ok(!existsSync(dir), `down removed ${dir}`);
    await rm(base, { recursive: true, force: true });
  });

  test('35 jobs: up to 4 workers; drained: back to 1; every job done once; 9 is refused with the bound', async () => {
    const up = await run(['up']);
    assert.equal(up.code, 0, up.out);
    const first = await service();
    assert.equal(first.scale?.count, 1);
    assert.deepEqual(first.scale?.bounds, { min: 1, max: 4 });
    assert.equal(first.scale?.scaledBy, undefined, 'the operator\'s count after a deploy');
    const version = first.instances[0]?.version;
    assert.ok(version !== undefined);

    const push = await run(['push', '35']);
    assert.equal(push.code, 0, push.out);
    assert.match(push.out, /"length":35/);

    const upTo4 = await run(['wait-count', '4', '60']);
    assert.equal(upTo4.code, 0, upTo4.out);
    // What the walkthrough saw when it got there: the count in force, where it came from, and 4 healthy.
    assert.match(upTo4.out, /worker count 4 \(scaled by instance worker\.0\.[0-9a-f]{8}: queue length \d+\) \| 4 placed, 4 healthy\n$/);
    const four = await service();
    assert.ok(four.instances.every((i) => i.version === version), 'scaling never changes the version');
    assert.ok(
      four.events.some((e) => /^worker scaled 1 → 4 by instance worker\.0\.[0-9a-f]{8} \(queue length 3\d\)$/.test(e.message)),
      four.events.map((e) => e.message).join('\n'),
    );
    // The human view says where the count came from.
    const human = await run(['bp', 'service', 'worker', '--events', '0']);
    assert.match(human.out, /count [1-4] \(scaled by instance worker\.0\.[0-9a-f]{8}: queue length \d+; bounds 1\.\.4; operator's count 1\)/);

    const downTo1 = await run(['wait-count', '1', '120']);
    assert.equal(downTo1.code, 0, downTo1.out);
    assert.match(downTo1.out, /worker count 1 \(scaled by instance worker\.0\.[0-9a-f]{8}: queue length \d+\) \| 1 placed, 1 healthy\n$/);
    const one = await service();
    assert.equal(one.scale?.count, 1);
    assert.equal(one.scale?.operatorCount, 1);
    assert.match(one.scale?.scaledBy ?? '', /^instance worker\.0\.[0-9a-f]{8}$/);
    assert.deepEqual(one.instances.map((i) => i.index), [0]);
    assert.ok(one.events.some((e) => /^worker scaled [2-4] → [1-3] by instance worker\.0\.[0-9a-f]{8} \(queue length \d+\)$/.test(e.message)), one.events.map((e) => e.message).join('\n'));
    // Each change was a scale plan of its own, the version unchanged: 1 -> 4 completed, and the last one is at 1.
    interface PlanJson { kind: string; toCount: number; status: string; toVersion: string }
    const plans = await json<{ plan: PlanJson; history: PlanJson[] }>(['plan', 'worker', '--json', '--history']);
    const all = [...plans.history, plans.plan];
    assert.ok(all.some((p) => p.kind === 'scale' && p.toCount === 4 && p.status === 'complete'), JSON.stringify(all.map((p) => [p.kind, p.toCount, p.status])));
    assert.equal(plans.plan.kind, 'scale');
    assert.equal(plans.plan.toCount, 1);
    assert.equal(plans.plan.status, 'complete');
    assert.ok(all.every((p) => p.toVersion === version), 'no plan changed the version');
    // The last jobs may still be worked on by instance 0.
    let q = await queue();
    for (let i = 0; i < 60 && (q.length > 0 || q.inFlight > 0); i++) {
      await new Promise((r) => setTimeout(r, 500));
      q = await queue();
    }
    assert.equal(q.length, 0);
    assert.equal(q.inFlight, 0, 'a worker that is stopped finishes the job in hand');
    assert.equal(q.done, 35);
    assert.ok(Object.keys(q.byWorker).length >= 2, `the jobs were shared: ${JSON.stringify(q.byWorker)}`);

    const ask = await run(['ask', '9']);
    assert.equal(ask.code, 0, ask.out);
    assert.match(ask.out, /"accepted":false/);
    assert.match(ask.out, /"status":422/);
    assert.match(ask.out, /count 9 is outside the bounds of service worker \(min 1, max 4\)/);
    await new Promise((r) => setTimeout(r, 1500));
    const after9 = await service();
    assert.equal(after9.scale?.count, 1, 'a refused request changes nothing');
    assert.equal(after9.instances.length, 1);
  });
});
