import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { agentCgroups, removeCgroups } from '../helpers/cgroups.js';
import { ensureBuilt, ROOT } from '../helpers/cli.js';
import { freePort } from '../helpers/net.js';

/**
 * The README's services walkthrough, run as a reader would: `walkthrough.sh up`, `kill h2`, `scale web 3`, `down`.
 * What the script prints is checked against the cluster itself (`walkthrough.sh bp service web --json`) and against
 * the proxy's upstream file, which a template with `services: [web]` in h1's graph keeps equal to the healthy
 * instances.
 */

const SCRIPT = join(ROOT, 'examples', 'services', 'walkthrough.sh');
/** Dynamic ports of this test's agents: 24400-24699, clear of the walkthrough's default 24100-24399. */
const PORTS_FROM = 24400;

function missing(): string | false {
  if (process.getuid?.() !== 0) return 'needs root';
  try {
    execFileSync('sh', ['-c', 'command -v etcd && command -v curl && command -v python3 && command -v setsid'], { stdio: 'ignore' });
    return false;
  } catch {
    return 'needs etcd, curl, python3 and setsid';
  }
}

interface Run {
  readonly code: number | null;
  readonly out: string;
}

interface Instance {
  readonly id: string;
  readonly index: number;
  readonly host: string;
  readonly state: string;
  readonly ports: Record<string, number>;
}

describe('examples/services/walkthrough.sh', { skip: missing(), timeout: 180_000 }, () => {
  let base = '';
  let dir = '';
  let proxyPort = 0;

  const run = (args: readonly string[], timeoutMs = 90_000): Promise<Run> =>
    new Promise((resolve) => {
      const p = spawn('bash', [SCRIPT, ...args], {
        cwd: ROOT,
        env: { ...process.env, BACKPLANE_WALKTHROUGH_DIR: dir, PROXY_PORT: String(proxyPort), PORTS_FROM: String(PORTS_FROM) },
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
        if (args[0] !== 'bp') process.stderr.write(`# walkthrough.sh ${args.join(' ')}: ${((Date.now() - t0) / 1000).toFixed(1)}s\n`);
        resolve({ code, out });
      });
    });

  const instances = async (): Promise<Instance[]> => {
    const r = await run(['bp', 'service', 'web', '--json'], 30_000);
    assert.equal(r.code, 0, r.out);
    const json = r.out.slice(r.out.indexOf('{'));
    return (JSON.parse(json) as { instances: Instance[] }).instances;
  };

  /** The proxy's upstream list is exactly web's healthy instances (by port: each agent has its own range). */
  const upstreamsFollow = async (count: number): Promise<void> => {
    const deadline = Date.now() + 20_000;
    let last = '';
    for (;;) {
      const lines = (await readFile(join(dir, 'upstreams'), 'utf8').catch(() => '')).split('\n').filter(Boolean);
      const healthy = (await instances()).filter((i) => i.state === 'healthy');
      const ports = lines.map((l) => Number(l.split(':').pop())).sort();
      const want = healthy.map((i) => i.ports['http'] ?? -1).sort();
      last = `upstreams ${JSON.stringify(lines)}, healthy ${JSON.stringify(healthy.map((i) => `${i.id}@${i.host}:${i.ports['http']}`))}`;
      if (healthy.length === count && JSON.stringify(ports) === JSON.stringify(want)) return;
      if (Date.now() > deadline) assert.fail(`the proxy's upstream list did not follow web's ${count} healthy instances: ${last}`);
      await sleep(250);
    }
  };

  before(async () => {
    ensureBuilt();
    base = await mkdtemp(join(tmpdir(), 'bp-walkthrough-'));
    dir = join(base, 'w');
    do proxyPort = await freePort();
    while (proxyPort >= PORTS_FROM && proxyPort < PORTS_FROM + 300);
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

  test('up: three agents, six healthy instances behind the proxy; kill h2: all six healthy elsewhere; scale web 3', async () => {
    const up = await run(['up']);
    assert.equal(up.code, 0, up.out);
    assert.match(up.out, /\$ backplane deploy -f examples\/services\/web\.yaml --wait \S+ \$OP/);
    assert.match(up.out, /all 6 instances of web healthy after/);
    assert.match(up.out, /^web +default +v1\+[0-9a-f]+ +6 +6 +6 /m);
    for (const h of ['h1', 'h2', 'h3']) assert.match(up.out, new RegExp(`^${h} +ready .* zone=`, 'm'));
    await upstreamsFollow(6);
    const page = await fetch(`http://127.0.0.1:${proxyPort}/`);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /web\.\d\.[0-9a-f]{8} on h[123]/);

    const killed = await run(['kill', 'h2']);
    assert.equal(killed.code, 0, killed.out);
    const took = /all 6 instances of web healthy, none on h2, after ([\d.]+)s/.exec(killed.out);
    assert.ok(took !== null, killed.out);
    process.stderr.write(`# walkthrough: kill -9 h2, all six healthy elsewhere after ${took[1]}s\n`);
    const moved = await instances();
    assert.equal(moved.length, 6);
    assert.ok(moved.every((i) => i.host !== 'h2' && i.state === 'healthy'), JSON.stringify(moved));
    await upstreamsFollow(6);

    const scaled = await run(['scale', 'web', '3']);
    assert.equal(scaled.code, 0, scaled.out);
    assert.match(scaled.out, /web: 6 -> 3 instances/);
    assert.match(scaled.out, /all 3 instances of web healthy after/);
    assert.deepEqual((await instances()).map((i) => i.index).sort(), [0, 1, 2], 'the highest indexes stopped first');
    await upstreamsFollow(3);
  });
});
