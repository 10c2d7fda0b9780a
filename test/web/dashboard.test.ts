import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { ROOT } from '../helpers/cli.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../helpers/etcd.js';
import { freePort } from '../helpers/net.js';
import { deploy, diagnose, instances, newCluster, opJson, startAgent, stopAgent, stopCluster, waitFor, workloadSpec, type TestCluster } from '../helpers/services.js';
import { opensslAvailable } from '../helpers/tls.js';

/**
 * The dashboard in a real browser (Debian's Chromium, driven by playwright-core) against a real cluster: one etcd,
 * three `backplane run` agents as processes, h1 serving the API and the dashboard on TCP with TLS (a throwaway
 * self-signed certificate). Tokens are made over h1's Unix socket (root, no token needed), as an admin would.
 *
 * One browser for the file, a page per role. The flows: sign in and see the hosts and a service; SIGKILL an agent
 * holding an instance and watch the service page follow it (host-down, replaced, healthy again) with no reload; roll
 * out a canary and press Promote, watching the plan finish; drain and undrain a host; a viewer sees the operator
 * buttons disabled, and a button forced on or a hand-made request is refused 403 with the server's message and
 * nothing changes; the graph of h1 with a failed resource and its error; hostile data stays text.
 * Screenshots go to a temp dir; with BACKPLANE_SCREENSHOTS=1 to docs/img/dashboard-*.png, the README's (a test run
 * must not change tracked files).
 */

const CHROMIUM = '/usr/bin/chromium';
const skip = !etcdAvailable() ? 'etcd is not installed' : !existsSync(CHROMIUM) ? 'chromium is not installed' : !opensslAvailable() ? 'openssl is not installed' : false;
const IMG = process.env['BACKPLANE_SCREENSHOTS'] === '1' ? join(ROOT, 'docs', 'img') : join(tmpdir(), 'bp-dashboard-screenshots');
/** A label value that would run script if it were ever parsed as HTML. */
const HOSTILE = '<img src=x onerror="window.__pwned=1">';

let etcd: EtcdCluster;
let work: string;
let c: TestCluster;
let base: string;
let browser: Browser;
let operator: string;
let viewer: string;
let opCtx: BrowserContext;
let page: Page;

/** A request on h1's API socket: root on the host, an admin, no token. */
function onSocket(method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> {
  const sock = join(c.agents.get('h1')?.stateDir ?? '', 'api.sock');
  return new Promise((resolve, reject) => {
    const req = httpRequest({ socketPath: sock, method, path, headers: { 'Content-Type': 'application/json' } }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: text === '' ? undefined : (JSON.parse(text) as unknown) }));
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

async function makeToken(name: string, role: string): Promise<string> {
  const r = await onSocket('POST', '/v1/tokens', { name, role });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  const token = (r.json as { token?: unknown }).token;
  assert.ok(typeof token === 'string' && token.startsWith('bpt_'), JSON.stringify(r.json));
  return token;
}

/** Status of GET `path` over TLS (the self-signed certificate accepted), for waiting until the listener is up. */
function httpsStatus(url: string): Promise<number> {
  return new Promise((resolve) => {
    const req = httpsRequest(url, { rejectUnauthorized: false, timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
    req.end();
  });
}

/** A fresh browser context (its own sessionStorage) signed in with `token`. */
async function signIn(token: string): Promise<{ ctx: BrowserContext; page: Page }> {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1360, height: 860 } });
  const p = await ctx.newPage();
  const errors: string[] = [];
  p.on('pageerror', (e) => errors.push(e.message));
  p.on('dialog', (d) => void d.accept());
  await p.goto(`${base}/`);
  await p.fill('#token', token);
  await p.click('form.login button[type=submit]');
  await p.waitForSelector('header .who');
  assert.deepEqual(errors, []);
  return { ctx, page: p };
}

function row(table: string, key: string): string {
  return `[data-table=${table}] .vt-row[data-key="${key}"]`;
}

const FENCE = ['--fence', '6s'];

async function cellTexts(p: Page, selector: string): Promise<string[]> {
  return p.locator(`${selector} .vt-cell`).allTextContents();
}

describe('the dashboard in Chromium, on a cluster of three agents', { skip, timeout: 600_000 }, () => {
  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'bp-web-'));
    etcd = await startEtcd({ members: 1 });
    c = await newCluster(join(work, 'c'), etcd.endpoints, `web-${Date.now()}`);
    const tls = join(work, 'tls');
    await mkdir(tls);
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1',
      '-keyout', join(tls, 'key.pem'), '-out', join(tls, 'cert.pem')], { stdio: 'ignore' });
    const port = await freePort();
    base = `https://127.0.0.1:${port}`;
    // h1: the API on TCP, and a graph with a chain of resources and one that fails.
    const app = join(work, 'app');
    const graph = `resources:
  - { kind: file, name: "${app}", type: directory }
  - { kind: file, name: "${app}/config", content: "port 80\\n", require: ["file[${app}]"] }
  - { kind: exec, name: reload, cmd: ["true"], refreshOnly: true, require: ["file[${app}/config]"] }
  - { kind: exec, name: migrate, cmd: ["sh", "-c", "echo 'schema migration failed: disk full' >&2; exit 3"], creates: "${app}/migrated", require: ["file[${app}/config]"] }
  - { kind: msg, name: ready, body: "app ready", require: ["exec[migrate]", "exec[reload]"] }
`;
    // cpu=1 each: two instances of 0.5 per host at most, so a service of 3 spans at least two hosts.
    await startAgent(c, 'h1', { capacity: 'cpu=1,memory=1G', graph, args: ['--api-listen', `127.0.0.1:${port}`, '--api-tls-cert', join(tls, 'cert.pem'), '--api-tls-key', join(tls, 'key.pem')] });
    // h2 and h3 keep their instances 6 s past their last renewal (3 s more than the lease TTL), so an instance of a
    // killed agent shows "host down" for about 3.4 s before it is replaced: with the default fence (the TTL) that is
    // 400 ms, which a page redrawing after a fetch can miss on a loaded machine.
    await startAgent(c, 'h2', { capacity: 'cpu=1,memory=1G', labels: { zone: 'b', note: HOSTILE }, args: FENCE });
    await startAgent(c, 'h3', { capacity: 'cpu=1,memory=1G', labels: { zone: 'c' }, args: FENCE });
    await waitFor('the dashboard served over TLS', async () => (await httpsStatus(`${base}/`)) === 200, 30_000);
    const r = await deploy(c, 'web', workloadSpec('web', 3, join(work, 'flags'), 'version: r1\n'), ['--wait', '90s']);
    assert.equal(r.code, 0, r.stderr);
    operator = await makeToken('ops', 'operator');
    viewer = await makeToken('watcher', 'viewer');
    browser = await chromium.launch({ executablePath: CHROMIUM });
    await mkdir(IMG, { recursive: true });
  });

  after(async () => {
    await browser?.close();
    if (c !== undefined) await stopCluster(c);
    await etcd?.stop();
    if (work !== undefined) await rm(work, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 }); // a killed workload's last write can land mid-removal
  });

  test('a bad token is refused with the server\'s message; a good one shows the hosts and the service', async () => {
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
    const p = await ctx.newPage();
    await p.goto(`${base}/`);
    await p.fill('#token', `bpt_0123456789abcdef_${'A'.repeat(43)}`);
    await p.click('form.login button[type=submit]');
    const refusal = await p.waitForSelector('.login-error:not(:empty)');
    assert.match((await refusal.textContent()) ?? '', /token 0123456789abcdef does not exist/);
    await ctx.close();

    ({ ctx: opCtx, page } = await signIn(operator));
    assert.match((await page.textContent('header .who')) ?? '', /ops · operator/);
    await page.waitForSelector('header .live[data-state=live]');
    for (const h of ['h1', 'h2', 'h3']) await page.waitForSelector(row('hosts', h));
    const h2 = await cellTexts(page, row('hosts', 'h2'));
    assert.equal(h2[1], 'ready');
    // Hostile data is text: the label shows as written, no element was made of it, no script ran.
    assert.ok(h2.some((t) => t.includes(HOSTILE)), JSON.stringify(h2));
    assert.equal(await page.locator('main img').count(), 0);
    assert.equal(await page.evaluate('window.__pwned'), undefined);
    // An operator may drain: the buttons are enabled.
    assert.equal(await page.locator(`${row('hosts', 'h2')} button[data-action=drain]`).isEnabled(), true);
    await page.screenshot({ path: join(IMG, 'dashboard-hosts.png'), clip: { x: 0, y: 0, width: 1360, height: 300 } });

    await page.click('nav a[data-route=services]');
    await page.waitForSelector(row('services', 'web'));
    await waitFor('web 3 of 3 healthy in the services table', async () => (await cellTexts(page, row('services', 'web')))[5] === '3', 30_000, 250);
  });

  test('an agent killed under an instance: the service page follows it live, host down to replaced to healthy, without a reload', async () => {
    await page.click(`${row('services', 'web')} a`);
    await page.waitForSelector('[data-view=service][data-service=web]');
    await page.evaluate('window.__samePage = true');
    const before = await instances(c, 'web');
    const victim = before.find((i) => i.host !== 'h1');
    assert.ok(victim !== undefined, `an instance off h1: ${JSON.stringify(before)}`);
    await page.waitForSelector(row('instances', victim.id));
    const agent = c.agents.get(victim.host);
    assert.ok(agent !== undefined);
    await stopAgent(agent, 'SIGKILL');
    // Its lease runs out: the row says the host is down ...
    await page.waitForSelector(`${row('instances', victim.id)} .badge.s-host-down`, { timeout: 30_000 }).catch(async (err: unknown) => {
      const rows = await page.locator('[data-table=instances]').evaluate((t) => t.outerHTML.slice(0, 4000)).catch(() => '?');
      throw new Error(`${String(err)}\n--- the page: stream ${(await page.textContent('header .live')) ?? '?'}; notice ${(await page.textContent('.notice')) ?? ''}\n--- its instances table: ${rows}\n${await diagnose(c, 'web')}`);
    });
    // ... then the instance is replaced elsewhere and all three are healthy again, on the same page.
    await waitFor(
      'the replacement healthy on the page',
      async () => {
        const txt = (await page.textContent('[data-field=healthy]')) ?? '';
        const gone = (await page.locator(row('instances', victim.id)).count()) === 0;
        return gone && /^3 healthy of 3 placed/.test(txt);
      },
      60_000,
      250,
    );
    assert.equal(await page.evaluate('window.__samePage'), true, 'the page was not reloaded');
    // Bring the host back for the rollout.
    await startAgent(c, victim.host, { capacity: 'cpu=1,memory=1G', args: FENCE, ...(victim.host === 'h2' ? { labels: { zone: 'b', note: HOSTILE } } : { labels: { zone: 'c' } }) });
  });

  test('a rollout with a canary: the plan waits, Promote in the browser, the plan completes live', async () => {
    const r = await deploy(c, 'web', workloadSpec('web', 3, join(work, 'flags'), 'version: r2\nupdate: { canary: 1, minHealthy: 1s }\n'));
    assert.equal(r.code, 0, r.stderr);
    // The plan appears on the open page and waits for promote: the canary step says so, Promote is enabled.
    const promote = page.locator('[data-section=plan] button[data-action=promote]');
    await waitFor(
      'the canary waiting for promote',
      async () => (await page.locator('[data-section=plan] .step[data-state=waiting-operator]').count()) === 1 && (await promote.isEnabled()),
      90_000,
      250,
      async () => `--- the page: stream ${(await page.textContent('header .live')) ?? '?'}; notice ${(await page.textContent('.notice')) ?? ''}\n--- its plan: ${(await page.textContent('[data-section=plan]')) ?? '(none)'}\n${await diagnose(c, 'web')}`,
    );
    assert.match((await page.textContent('[data-section=plan] h3')) ?? '', /^Plan web-/);
    assert.equal(await page.locator('[data-section=plan] button[data-action=abort]').isEnabled(), true);
    await page.screenshot({ path: join(IMG, 'dashboard-service.png'), fullPage: true });
    await promote.click();
    await page.waitForSelector('.notice.show.info', { timeout: 30_000 });
    assert.match((await page.textContent('.notice')) ?? '', /promote applied/);
    // The plan goes on by itself and completes, shown live.
    await waitFor(
      'the plan complete on the page',
      async () => {
        const done = await page.getAttribute('[data-section=plan] .progress', 'data-done');
        const total = await page.getAttribute('[data-section=plan] .progress', 'data-total');
        return (await page.locator('[data-section=plan] .plan-head .badge.s-complete').count()) === 1 && done === total;
      },
      120_000,
      250,
    );
    const list = await instances(c, 'web');
    assert.equal(list.filter((i) => i.state === 'healthy' && i.version.startsWith('r2')).length, 3, JSON.stringify(list));
    assert.equal(await page.locator('[data-section=plan] button[data-action=promote]').isEnabled(), false, 'nothing to promote once complete');
    assert.equal(await page.evaluate('window.__samePage'), true, 'the page was not reloaded');
  });

  test('a viewer sees the operator buttons disabled; a forced click and a hand-made request are refused 403 and change nothing', async () => {
    const { ctx, page: vp } = await signIn(viewer);
    try {
      assert.match((await vp.textContent('header .who')) ?? '', /watcher · viewer/);
      await vp.waitForSelector(row('hosts', 'h3'));
      // The operator drains h3 in the browser; the viewer's page follows.
      await page.click('nav a[data-route=hosts]');
      await page.click(`${row('hosts', 'h3')} button[data-action=drain]`);
      await vp.waitForSelector(`${row('hosts', 'h3')} .badge.s-draining`, { timeout: 30_000 });
      const undrain = vp.locator(`${row('hosts', 'h3')} button[data-action=undrain]`);
      assert.equal(await undrain.isEnabled(), false);
      assert.match((await undrain.getAttribute('title')) ?? '', /operator role/);
      for (const b of await vp.locator('[data-table=hosts] button').all()) assert.equal(await b.isEnabled(), false);
      // Forced on, the button's request is refused, and the page says why in the server's words.
      await undrain.evaluate((b: HTMLElement | SVGElement) => {
        b.removeAttribute('disabled');
        (b as HTMLElement).click();
      });
      await vp.waitForSelector('.notice.show.error');
      assert.match((await vp.textContent('.notice')) ?? '', /watcher has the viewer role; hosts\.undrain .* needs the operator role/);
      // By hand, with the viewer's token from the page.
      const status = await vp.evaluate(`fetch('/v1/hosts/h3/undrain', { method: 'POST', headers: { Authorization: 'Bearer ' + sessionStorage.getItem('backplane.token'), 'Content-Type': 'application/json' }, body: '{}' }).then((r) => r.status)`);
      assert.equal(status, 403);
      const hosts = await opJson<{ host: string; draining: boolean }[]>(c, ['hosts']);
      assert.equal(hosts.find((h) => h.host === 'h3')?.draining, true, 'still draining: the viewer changed nothing');
      // The plan's buttons are disabled for the viewer too.
      await vp.goto(`${base}/#/services/web`);
      await vp.waitForSelector('[data-section=plan] button[data-action=pause]');
      for (const b of await vp.locator('[data-section=plan] button').all()) assert.equal(await b.isEnabled(), false);
      // The operator undrains in the browser.
      await page.click(`${row('hosts', 'h3')} button[data-action=undrain]`);
      await vp.goto(`${base}/#/hosts`);
      await vp.waitForSelector(`${row('hosts', 'h3')} .badge.s-ready`, { timeout: 30_000 });
    } finally {
      await ctx.close();
    }
  });

  test("the graph of h1: each resource by its state; the failed one shows its error", async () => {
    await page.click('nav a[data-route=graph]');
    const failed = page.locator('svg.graph g.node[data-id="exec[migrate]"]');
    await waitFor('exec[migrate] failed in the graph', async () => (await failed.getAttribute('data-state')) === 'failed', 60_000, 250);
    // The graph file's five resources (and the instances h1 runs, which the agent adds to its graph).
    const ids = await page.locator('svg.graph g.node').evaluateAll((gs: { getAttribute(n: string): string | null }[]) => gs.map((g) => g.getAttribute('data-id')));
    for (const id of [`file[${join(work, 'app')}]`, `file[${join(work, 'app')}/config]`, 'exec[reload]', 'exec[migrate]', 'msg[ready]']) assert.ok(ids.includes(id), `${id} in ${JSON.stringify(ids)}`);
    assert.ok((await page.locator('svg.graph path.edge').count()) >= 5);
    assert.equal(await page.getAttribute('svg.graph g.node[data-id="msg[ready]"]', 'data-state'), 'blocked');
    // Layers: the directory first, the message last.
    const x = async (id: string): Promise<number> => Number(/translate\(([\d.]+)/.exec((await page.getAttribute(`svg.graph g.node[data-id="${id}"]`, 'transform')) ?? '')?.[1]);
    assert.ok((await x(`file[${join(work, 'app')}]`)) < (await x(`file[${join(work, 'app')}/config]`)));
    assert.ok((await x('exec[migrate]')) < (await x('msg[ready]')));
    assert.match((await failed.locator('title').textContent()) ?? '', /schema migration failed: disk full/);
    await failed.click();
    assert.match((await page.textContent('[data-section=node] [data-field=error]')) ?? '', /schema migration failed: disk full/);
    await page.screenshot({ path: join(IMG, 'dashboard-graph.png') });
    // The event stream of this page saw the kill, the rollout and the drain.
    await page.click('nav a[data-route=events]');
    await page.waitForSelector('[data-table=events] .vt-row');
    const seen = (await page.locator('[data-table=events] .vt-row').allTextContents()).join('\n');
    assert.match(seen, /cluster.*(allocs|plans) changed/, seen);
    await opCtx.close();
  });
});
