import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Agent } from '../../src/agent/agent.js';
import { ValidationErrors } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';

/**
 * Nothing is applied from a graph that does not fully build, however big it is and wherever the problem is: the
 * first files of a big graph are written quickly (the engine starts workers while the rest are still being set up),
 * but only once the whole graph has been validated. One problem in the last resource must still leave every file
 * of the graph unwritten, in a one-shot run and in an agent that stays up.
 */
const dirs: string[] = [];
after(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

const N = 3000;

async function graphWithTail(tail: (dir: string) => string): Promise<{ file: string; target: string; state: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'bp-invalid-tail-'));
  dirs.push(dir);
  const target = join(dir, 'target');
  await mkdir(target);
  const lines = ['resources:', `  - { kind: file, name: ${JSON.stringify(target)}, type: directory }`];
  for (let i = 0; i < N; i++) lines.push(`  - { kind: file, name: ${JSON.stringify(join(target, `f${i}`))}, content: "hello ${i}\\n", mode: "0644" }`);
  lines.push(tail(target));
  const file = join(dir, 'graph.yaml');
  await writeFile(file, lines.join('\n') + '\n');
  return { file, target, state: join(dir, 'state') };
}

const TAILS: Record<string, (target: string) => string> = {
  'a bad parameter': (t) => `  - { kind: file, name: ${JSON.stringify(join(t, 'last'))}, content: "x", mode: "0648" }`,
  'an unknown parameter': (t) => `  - { kind: file, name: ${JSON.stringify(join(t, 'last'))}, contnet: "x" }`,
  'a second resource for a managed path': (t) => `  - { kind: file, name: other, path: ${JSON.stringify(join(t, 'f0'))}, content: "x" }`,
  'a dependency cycle': (t) =>
    `  - { kind: file, name: ${JSON.stringify(join(t, 'last'))}, content: "x", require: ["file[${join(t, 'f1')}]"], before: ["file[${join(t, 'f1')}]"] }`,
};

for (const [what, tail] of Object.entries(TAILS)) {
  for (const convergedTimeout of [0, -1]) {
    test(`${what} in the last of ${N + 2} resources: nothing is written (${convergedTimeout === 0 ? 'one-shot run' : 'agent'})`, async () => {
      const g = await graphWithTail(tail);
      const agent = new Agent({ file: g.file, log: createLogger({ level: 'silent' }), stateDir: g.state, api: false, convergedTimeout });
      try {
        await assert.rejects(agent.run(), (err: unknown) => err instanceof ValidationErrors);
      } finally {
        await agent.stop();
        await agent.close();
      }
      assert.deepEqual(await readdir(g.target), [], 'files were written from a graph that did not validate');
    });
  }
}

test(`the same graph without the bad tail is applied (the check above can see writes)`, async () => {
  const g = await graphWithTail(() => '');
  const agent = new Agent({ file: g.file, log: createLogger({ level: 'silent' }), stateDir: g.state, api: false, convergedTimeout: 0 });
  try {
    assert.equal((await agent.run()).reason, 'converged');
  } finally {
    await agent.close();
  }
  assert.equal((await readdir(g.target)).length, N);
});
