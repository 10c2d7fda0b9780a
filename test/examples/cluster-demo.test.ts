import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { ensureBuilt, ROOT } from '../helpers/cli.js';
import { freePort } from '../helpers/net.js';

const SCRIPT = join(ROOT, 'examples', 'cluster', 'run-demo.sh');
/** The quick start's directory (examples/demo.yaml): the cluster demo must never delete it. */
const QUICK_START = '/tmp/backplane-demo';

function hasEtcd(): boolean {
  try {
    execFileSync('sh', ['-c', 'command -v etcd && command -v curl'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function runDemo(env: Record<string, string>, timeoutMs: number): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn('bash', [SCRIPT], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => p.kill('SIGINT'), timeoutMs);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

describe('examples/cluster/run-demo.sh', () => {
  test('refuses a BACKPLANE_DEMO_ROOT it did not make, since it deletes its root at the end', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bp-not-a-demo-'));
    try {
      await writeFile(join(dir, 'precious'), 'x');
      const r = await runDemo({ BACKPLANE_DEMO_ROOT: dir }, 20_000);
      assert.equal(r.code, 1, r.out);
      assert.match(r.out, /exists and was not made by this demo; it would be deleted at the end/);
      assert.deepEqual(await readdir(dir), ['precious']);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('runs its three hosts in its own directory and leaves the quick start demo directory alone', { skip: hasEtcd() ? false : 'needs etcd and curl', timeout: 120_000 }, async () => {
    ensureBuilt();
    const madeQuickStart = !existsSync(QUICK_START);
    await mkdir(QUICK_START, { recursive: true });
    const mine = join(QUICK_START, `kept-by-cluster-demo-test-${process.pid}`);
    await writeFile(mine, 'the quick start demo owns this directory\n');
    try {
      // Three agents and etcd on a loaded machine: give them a few seconds, then let the script clean up.
      const r = await runDemo({ DEMO_SECONDS: '4', ETCD_PORT: String(await freePort()) }, 100_000);
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, /cleaned up .* and \/tmp\/backplane-cluster-demo/);
      assert.ok(existsSync(mine), `run-demo.sh deleted ${QUICK_START}:\n${r.out}`);
      assert.ok(!existsSync('/tmp/backplane-cluster-demo'), 'the demo removed its own directory');
    } finally {
      await rm(mine, { force: true });
      if (madeQuickStart) await rm(QUICK_START, { recursive: true, force: true });
    }
  });
});
