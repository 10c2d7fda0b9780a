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
 * The README's rollout walkthrough, run as a reader would: `rollout.sh up` (deploy v1), `bad` (v2 crashes and is
 * rolled back by itself), `canary` (v3 with one canary waits for promote), `promote` (the rest rolls), `down`. What
 * the script prints (`backplane plan web`, `--history`) is checked, and so is the service itself after each step
 * (`rollout.sh bp service web --json`): which versions run, and that they are healthy.
 */

const SCRIPT = join(ROOT, 'examples', 'services', 'rollout.sh');
/** The instances' ports: 24900-24999, clear of the script's default 24800-24899 and the services walkthrough's. */
const PORTS_FROM = 24900;

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

interface Instance {
  readonly index: number;
  readonly version: string;
  readonly state: string;
}

describe('examples/services/rollout.sh', { skip: missing(), timeout: 150_000 }, () => {
  let base = '';
  let dir = '';

  const run = (args: readonly string[], timeoutMs = 90_000): Promise<Run> =>
    new Promise((resolve) => {
      const p = spawn('bash', [SCRIPT, ...args], {
        cwd: ROOT,
        env: { ...process.env, BACKPLANE_ROLLOUT_DIR: dir, PORTS_FROM: String(PORTS_FROM) },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      p.stdout.on('data', (d: Buffer) => (out += d.toString()));
      p.stderr.on('data', (d: Buffer) => (out += d.toString()));
      // SIGINT, as Ctrl-C would: `up` then stops everything it started.
      const timer = setTimeout(() => p.kill('SIGINT'), timeoutMs);
      const t0 = Date.now();
      p.on('close', (code) => {
        clearTimeout(timer);
        if (args[0] !== 'bp') process.stderr.write(`# rollout.sh ${args.join(' ')}: ${((Date.now() - t0) / 1000).toFixed(1)}s\n`);
        resolve({ code, out });
      });
    });

  /** web's instances as `version:state` labels (the version's label only: v1, v2, v3), sorted. */
  const running = async (): Promise<string[]> => {
    const r = await run(['bp', 'service', 'web', '--json'], 30_000);
    assert.equal(r.code, 0, r.out);
    const list = (JSON.parse(r.out.slice(r.out.indexOf('{'))) as { instances: Instance[] }).instances;
    return list.map((i) => `${i.version.split('+')[0] ?? ''}:${i.state}`).sort();
  };

  before(async () => {
    ensureBuilt();
    base = await mkdtemp(join(tmpdir(), 'bp-rollout-walkthrough-'));
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

  test('up: deploy v1; bad: v2 rolled back by itself; canary: v3 waits for promote; promote: all v3', async () => {
    const up = await run(['up']);
    assert.equal(up.code, 0, up.out);
    assert.match(up.out, /^plan web-1 {2}deploy v1\+[0-9a-f]{12} \(count 0 -> 4\) {2}complete /m);
    assert.match(up.out, /^ {2}deploy {2}\[4 of 4 complete\] {2}all at once$/m);
    assert.deepEqual(await running(), ['v1:healthy', 'v1:healthy', 'v1:healthy', 'v1:healthy']);

    const bad = await run(['bad']);
    assert.equal(bad.code, 0, bad.out);
    assert.match(bad.out, /web: version v2\+[0-9a-f]{12} failed and was rolled back: rollback from v2\+[0-9a-f]{12} to v1\+[0-9a-f]{12} \(step web\.\d failed: /);
    // The current plan: the rollback, complete; the history: the update, rolled back, and why.
    assert.match(bad.out, /^plan web-3 {2}rollback v2\+[0-9a-f]{12} -> v1\+[0-9a-f]{12} \(count 4\) {2}complete /m);
    assert.match(bad.out, /^web-2 +update +v1\+[0-9a-f]{12} -> v2\+[0-9a-f]{12} +count 4 +rolled-back .* step web\.\d failed: web\.\d\.[0-9a-f]{8} failed on h1: crash-looping/m);
    assert.match(bad.out, /; rolled back to v1\+[0-9a-f]{12}$/m);
    assert.deepEqual(await running(), ['v1:healthy', 'v1:healthy', 'v1:healthy', 'v1:healthy'], 'back on v1, all healthy');

    const canary = await run(['canary']);
    assert.equal(canary.code, 0, canary.out);
    assert.match(canary.out, /canaries healthy; waiting for promote \(backplane rollout promote web\)/);
    assert.match(canary.out, /^plan web-4 {2}update v1\+[0-9a-f]{12} -> v3\+[0-9a-f]{12} \(count 4\) {2}waiting /m);
    assert.match(canary.out, /^ {4}web\.0 +replace +waiting-operator /m);
    assert.match(canary.out, /^ {2}rollout {2}\[0 of 3 complete\]/m);
    assert.deepEqual(await running(), ['v1:healthy', 'v1:healthy', 'v1:healthy', 'v1:healthy', 'v3:healthy'], 'the canary runs next to the four old instances');

    const promote = await run(['promote']);
    assert.equal(promote.code, 0, promote.out);
    assert.match(promote.out, /^plan web-4 {2}update v1\+[0-9a-f]{12} -> v3\+[0-9a-f]{12} \(count 4\) {2}complete /m);
    assert.match(promote.out, /^\$ backplane rollout promote web \$OP$/m);
    assert.match(promote.out, /^ {4}\d\d:\d\d:\d\d {2}canaries promoted$/m);
    assert.match(promote.out, /^ {2}rollout {2}\[3 of 3 complete\]/m);
    assert.deepEqual(await running(), ['v3:healthy', 'v3:healthy', 'v3:healthy', 'v3:healthy']);
  });
});
