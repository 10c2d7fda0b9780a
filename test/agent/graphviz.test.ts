import assert from 'node:assert/strict';
import { chmod, lstat, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Agent } from '../../src/agent/agent.js';
import { createLogger } from '../../src/log.js';
import { createOtherUser, skipReason, type OtherUser } from '../helpers/other-user.js';

const PRECIOUS = 'precious\n';

describe('--graphviz in a directory other users can write', { skip: skipReason }, () => {
  let other: OtherUser;
  let base: string;
  before(async () => {
    other = createOtherUser();
    base = await mkdtemp(join(tmpdir(), 'bp-dot-'));
    await chmod(base, 0o755);
  });
  after(async () => {
    other.remove();
    await rm(base, { recursive: true, force: true });
  });

  test('symlinks planted at the old temp name and at the picture itself: their targets never change', async () => {
    // Like /tmp: world-writable and sticky.
    const shared = join(base, 'shared');
    await mkdir(shared);
    await chmod(shared, 0o1777);
    const victims = join(base, 'victims');
    await mkdir(victims, { mode: 0o755 });
    const v1 = join(victims, 'v1');
    const v2 = join(victims, 'v2');
    await writeFile(v1, PRECIOUS);
    await writeFile(v2, PRECIOUS);
    const dot = join(shared, 'graph.dot');
    const plant = await other.node(`
      import fs from 'node:fs';
      fs.symlinkSync(${JSON.stringify(v1)}, ${JSON.stringify(join(shared, `.graph.dot.tmp-${process.pid}`))});
      fs.symlinkSync(${JSON.stringify(v2)}, ${JSON.stringify(dot)});
    `);
    assert.equal(plant.status, 0, plant.stderr);

    const graph = join(base, 'graph.yaml');
    await writeFile(graph, 'resources:\n  - { kind: noop, name: a }\n');
    const state = join(base, 'state');
    const agent = new Agent({ file: graph, log: createLogger({ level: 'silent' }), convergedTimeout: 0, watchGraph: false, graphviz: dot, stateDir: state });
    const r = await agent.run();
    await agent.close();
    assert.equal(r.reason, 'converged');

    assert.equal(await readFile(v1, 'utf8'), PRECIOUS, 'the temp name was not written through');
    assert.equal(await readFile(v2, 'utf8'), PRECIOUS, 'the picture replaced the planted link instead of writing through it');
    assert.ok((await lstat(dot)).isFile());
    assert.match(await readFile(dot, 'utf8'), /^digraph backplane \{/);
    // No temp file of ours is left; the planted link stays where it was (it is theirs).
    assert.deepEqual((await readdir(shared)).sort(), [`.graph.dot.tmp-${process.pid}`, 'graph.dot']);
  });
});
