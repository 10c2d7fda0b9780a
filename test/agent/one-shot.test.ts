import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Agent } from '../../src/agent/agent.js';
import { createLogger } from '../../src/log.js';
import { until } from '../helpers/engine.js';

/**
 * A run that ends at its first settle (--converged-timeout 0, --noop) checks each resource once and watches nothing:
 * a watch per resource, and the echo of every write the run made, were a tenth of a one-shot 1,000-file run. An
 * agent that stays up (or waits for a quiet period) watches as before.
 */
const dirs: string[] = [];
after(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

async function agentFor(opts: { convergedTimeout: number; noop?: boolean }): Promise<{ agent: Agent; dir: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'bp-oneshot-'));
  dirs.push(dir);
  const file = join(dir, 'graph.yaml');
  await writeFile(file, `resources:\n  - { kind: file, name: ${join(dir, 'out')}, content: "hi\\n" }\n`);
  const agent = new Agent({ file, log: createLogger({ level: 'silent' }), stateDir: join(dir, 'state'), api: false, ...opts });
  return { agent, dir };
}

test('a run that ends at its first settle applies the graph without watching it', async () => {
  const { agent, dir } = await agentFor({ convergedTimeout: 0 });
  assert.equal(agent.engine.watch, false);
  const result = await agent.run();
  assert.equal(result.reason, 'converged');
  assert.equal(await readFile(join(dir, 'out'), 'utf8'), 'hi\n');
  assert.equal((await agentFor({ convergedTimeout: 0, noop: true })).agent.engine.watch, false);
});

test('an agent that stays up, or waits for a quiet period, watches', async () => {
  assert.equal((await agentFor({ convergedTimeout: -1 })).agent.engine.watch, true);
  assert.equal((await agentFor({ convergedTimeout: 0.5 })).agent.engine.watch, true);
});

test('a run that checks once opens its API socket only if it is still running after a second', async () => {
  const quick = await agentFor({ convergedTimeout: 0 });
  const quickAgent = new Agent({ file: join(quick.dir, 'graph.yaml'), log: createLogger({ level: 'silent' }), stateDir: join(quick.dir, 'state'), convergedTimeout: 0 });
  assert.equal((await quickAgent.run()).reason, 'converged');
  assert.equal(existsSync(join(quick.dir, 'state', 'api.sock')), false, 'a run over within a second opened its API socket');
  await quickAgent.close();

  const dir = await mkdtemp(join(tmpdir(), 'bp-oneshot-'));
  dirs.push(dir);
  await writeFile(join(dir, 'graph.yaml'), `resources:\n  - { kind: exec, name: wait, cmd: [sleep, "2"] }\n`);
  const slow = new Agent({ file: join(dir, 'graph.yaml'), log: createLogger({ level: 'silent' }), stateDir: join(dir, 'state'), convergedTimeout: 0 });
  const running = slow.run();
  await until(() => existsSync(join(dir, 'state', 'api.sock')), 5000, 'the API socket of a run still going after a second');
  assert.equal((await running).reason, 'converged');
  await slow.close();
});

/**
 * Once the graph settles, a one-shot run finishes on the event loop's next turn, not on a timer: setTimeout(fn, 0)
 * is 1 ms in Node, spent idle between the run's last write and its exit. With setTimeout frozen the run still ends.
 */
test('a run that ends at its first settle finishes without waiting on a timer', async (t) => {
  for (const opts of [{ convergedTimeout: 0 }, { convergedTimeout: 0, noop: true }]) {
    const dir = await mkdtemp(join(tmpdir(), 'bp-oneshot-'));
    dirs.push(dir);
    await writeFile(join(dir, 'graph.yaml'), 'resources: []\n');
    const agent = new Agent({ file: join(dir, 'graph.yaml'), log: createLogger({ level: 'silent' }), stateDir: join(dir, 'state'), api: false, ...opts });
    t.mock.timers.enable({ apis: ['setTimeout'] });
    try {
      // Turns of the loop, not time: a run that waits for a frozen timer never ends, and this gives up on it.
      let turns = 0;
      const gaveUp = (async () => {
        while (turns++ < 2000) await new Promise<void>((resolve) => setImmediate(resolve));
        return 'still running';
      })();
      const ended = await Promise.race([agent.run().then((r) => r.reason), gaveUp]);
      turns = Infinity;
      assert.equal(ended, 'converged', JSON.stringify(opts));
    } finally {
      t.mock.timers.reset();
      await agent.close();
    }
  }
});

test('the settle line counts what failed and what it blocked (from the engine\'s counts)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-oneshot-'));
  dirs.push(dir);
  await writeFile(
    join(dir, 'graph.yaml'),
    `resources:\n  - { kind: exec, name: fails, cmd: ["false"] }\n  - { kind: file, name: ${join(dir, 'after')}, content: "x", require: ["exec[fails]"] }\n  - { kind: file, name: ${join(dir, 'ok')}, content: "y" }\n`,
  );
  const lines: string[] = [];
  const agent = new Agent({ file: join(dir, 'graph.yaml'), log: createLogger({ write: (l) => lines.push(l) }), stateDir: join(dir, 'state'), api: false, convergedTimeout: 0 });
  const result = await agent.run();
  await agent.close();
  assert.equal(result.summary.failed.length, 1);
  assert.equal(result.summary.blocked.length, 1);
  assert.match(lines.join(''), /settled with problems: 1 of 3 resources in \d+ms, 1 failed, 1 blocked\n/);
});

test('the graph cache entry is written once the engine has changed something or settled, not while it starts', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-oneshot-'));
  dirs.push(dir);
  const file = join(dir, 'graph.yaml');
  await writeFile(file, `resources:\n  - { kind: exec, name: wait, cmd: [sleep, "0.3"] }\n`);
  const agent = new Agent({ file, log: createLogger({ level: 'silent' }), stateDir: join(dir, 'state'), api: false, convergedTimeout: 0 });
  // Inside view: encoding and hashing the entry is synchronous (~0.1 s at 10,000 resources); started right after the
  // swap it held the event loop before the first change.
  const source = (agent as unknown as { source: { publish(g: unknown): void } }).source;
  const publish = source.publish.bind(source);
  let changed = false;
  agent.engine.onChange(() => (changed = true));
  const seen: boolean[] = [];
  source.publish = (g) => {
    seen.push(changed || agent.engine.settled);
    publish(g);
  };
  assert.equal((await agent.run()).reason, 'converged');
  await agent.close();
  assert.deepEqual(seen, [true], 'published (and its cache entry written) before anything had run');
});

test("a run of a YAML graph does not gather the host's facts; the first resource that reads them does", async () => {
  const { agent } = await agentFor({ convergedTimeout: 0 });
  const gathered = (): unknown => (agent as unknown as { source: { gathered?: unknown } }).source.gathered;
  assert.equal((await agent.run()).reason, 'converged');
  // Network interfaces and /proc/meminfo twice: ~0.5 ms of every start, for a value no file resource reads.
  assert.equal(gathered(), undefined, 'the facts were gathered for a graph of files');
  const facts = agent.engine.world.facts();
  assert.equal(typeof facts.hostname, 'string');
  assert.equal(gathered(), facts);
  assert.equal(agent.engine.world.facts(), facts, 'gathered once');
  await agent.close();
});
