import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pkgSchema, quickPkgParams } from '../../src/resources/pkg/schema.js';
import { pkgKind } from '../../src/resources/pkg.js';
import { quickSvcParams, svcSchema } from '../../src/resources/svc-schema.js';
import { svcKind } from '../../src/resources/svc.js';
import { quickTemplateParams, templateKind, templateSchema } from '../../src/resources/template.js';
import { buildGraph } from '../../src/graph/build.js';
import { builtinKinds } from '../../src/resources/builtin-kinds.js';
import { createRegistry } from '../../src/resources/registry.js';
import { ValidationErrors } from '../../src/errors.js';
import { resourceId } from '../../src/graph/ids.js';

/**
 * Differential tests of the pkg, template and svc kinds' quickParams against their schemas: whatever a shortcut
 * answers must be exactly the schema's data (values, defaults, key order, nested too); where the schema refuses, the
 * shortcut must answer undefined. Each kind's parameters are tried alone and in pairs, over a few base shapes, with
 * good values, wrong types, nulls and the edge values of each check.
 */

type Quick = (name: string, params: Readonly<Record<string, unknown>>) => unknown;
type Parse = (input: Record<string, unknown>) => { success: boolean; data?: unknown };

/** Keys in order, recursively: deepEqual does not compare the order of keys. */
function keyOrder(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(keyOrder);
  if (typeof v === 'object' && v !== null) return Object.entries(v).map(([k, x]) => [k, keyOrder(x)]);
  return v;
}

interface Harness {
  readonly kind: string;
  readonly quick: Quick;
  readonly parse: Parse;
  readonly defaults: (name: string) => Record<string, unknown>;
  readonly names: readonly string[];
  readonly bases: readonly Record<string, unknown>[];
  readonly values: Readonly<Record<string, readonly unknown[]>>;
}

function differential(h: Harness): { answered: number; compared: number } {
  let answered = 0;
  let compared = 0;
  const check = (name: string, params: Record<string, unknown>): void => {
    compared++;
    const quick = h.quick(name, params);
    if (quick === undefined) return; // the schema decides: nothing to compare
    answered++;
    const r = h.parse({ ...h.defaults(name), ...params });
    const what = `${h.kind} ${name} ${JSON.stringify(params)}`;
    assert.ok(r.success, `quickParams accepted what the schema refuses: ${what}`);
    assert.deepEqual(quick, r.data, `quickParams answered differently from the schema: ${what}`);
    assert.deepEqual(keyOrder(quick), keyOrder(r.data), `quickParams' keys are not in the schema's order: ${what}`);
  };
  const keys = Object.keys(h.values);
  for (const name of h.names) {
    for (const base of h.bases) {
      check(name, base);
      for (const k of keys) {
        for (const v of h.values[k] ?? []) {
          check(name, { ...base, [k]: v });
          for (const k2 of keys) {
            if (k2 <= k) continue;
            for (const v2 of h.values[k2] ?? []) check(name, { ...base, [k]: v, [k2]: v2 });
          }
        }
      }
    }
  }
  return { answered, compared };
}

const DURATIONS = [5, 0, 0.5, '250ms', '2s', '1m', '1h', '5x', '', -1, Number.NaN, Number.POSITIVE_INFINITY, null, true];
const SIZES = [0, 1024, '512K', '256M', '10MB', '1GiB', '1G', 'lots', -5, 1.5, Number.NaN, null];
const OWNERS = ['root', 'www-data', '', 0, 33, -0, -1, 1.5, 2 ** 53, Number.NaN, null, true];
const PATHS = ['/a/b', '/', 'rel/x', '', '/a/../b', '/a/..b', '/a\0b', '/\uD800', `/${'x'.repeat(256)}`, 5, null];

test('pkg: every answer quickPkgParams gives is the schema output', () => {
  const { answered, compared } = differential({
    kind: 'pkg',
    quick: quickPkgParams,
    parse: (i) => pkgSchema().safeParse(i),
    defaults: (name) => ({ name }),
    names: ['nginx', 'libc6:i386', 'Nginx', 'a', 'g++', ''],
    bases: [{}, { state: 'absent' }],
    values: {
      name: ['nginx', 'libssl3', 'libc6:i386', 'x', 'Nginx', '-x', 'a b', 'c++', '', 5, null, ['nginx']],
      state: ['installed', 'absent', '3.0.15-1~deb12u1', '1:2.3-1', '1.0', 'latest!', '', 'Installed', '-1', 0, null, true],
      purge: [true, false, 'yes', 0, null],
      aptOptions: [[], ['-o', 'APT::Install-Recommends=1'], ['-t', 'bookworm-backports'], [''], ['-o', 5], 'x', null, {}],
      extra: ['x'],
    },
  });
  assert.ok(answered > 200, `answered only ${answered} of ${compared}`);
  // The README's shapes, the bench's.
  for (const [name, p] of [
    ['nginx', {}],
    ['libssl3', { state: '3.0.15-1~deb12u1' }],
    ['telnet', { state: 'absent', purge: true }],
  ] as const)
    assert.notEqual(quickPkgParams(name, p), undefined, `${name} ${JSON.stringify(p)}`);
});

test('template: every answer quickTemplateParams gives is the schema output', () => {
  const { answered, compared } = differential({
    kind: 'template',
    quick: quickTemplateParams,
    parse: (i) => templateSchema().safeParse(i),
    defaults: (path) => ({ path }),
    names: ['/etc/x.conf', 'rel'],
    bases: [{}, { template: 'port {{ vars.port }}', vars: { port: 80 } }, { source: '/srv/t.liquid' }, { state: 'absent' }],
    values: {
      path: PATHS,
      state: ['exists', 'absent', 'gone', null],
      template: [
        'plain',
        '',
        '{{ vars.port }}',
        '{{ vars.nope }}',
        '{{ facts.hostname }} {{ facts.cpus }}',
        '{{ facts.hostnme }}',
        '{% for i in services.web %}{{ i.address }}{% endfor %}',
        '{% if x %}',
        '{{ bogus }}',
        '{% include "x" %}',
        '{{ vars.port | nofilter }}',
        3,
        null,
      ],
      source: ['/srv/t.liquid', 'rel.liquid', '/a/../t', 5],
      vars: [{}, { port: 8080 }, { port: 80, nested: { a: [1, 2] } }, { port: undefined }, [], 'x', null, new Map()],
      services: [[], ['web'], ['cache.primary'], ['Web'], ['-web'], [''], [5], 'web', null],
      mode: ['0644', '644', 'u=rw,go=r', '4755', '648', '', 420, -1, 1.5, null],
      owner: OWNERS,
      group: ['adm', '', 0, -1],
      force: [true, false, 'yes', null],
      extra: [1],
    },
  });
  assert.ok(answered > 500, `answered only ${answered} of ${compared}`);
  // The README's shapes, the bench's (an inline template with vars, facts, services, a mode).
  assert.notEqual(quickTemplateParams('/etc/myapp/myapp.conf', { vars: { port: 8080 }, template: 'listen {{ facts.ipv4 }}:{{ vars.port }}\nworkers {{ facts.cpus }}\n' }), undefined);
  assert.notEqual(quickTemplateParams('/tmp/u', { services: ['web'], template: '{% for i in services.web %}{{ i.address }}:{{ i.ports.http }}\n{% endfor %}' }), undefined);
  assert.notEqual(quickTemplateParams('/t/nginx.conf', { mode: '0644', vars: { http_port: 28090, stack_dir: '/t' }, template: 'listen {{ vars.http_port }};\nroot {{ vars.stack_dir }}/www;\n' }), undefined);
});

const SVC_VALUES: Readonly<Record<string, readonly unknown[]>> = {
  cmd: [['/usr/sbin/nginx', '-g', 'daemon off;'], ['sleep', '10'], [''], ['', 'x'], [], ['/bin/x', 5], '/bin/x', null],
  env: [{}, { A: '1', B: '' }, { A: 1 }, { A: null }, [], 'A=1', null],
  cwd: PATHS,
  user: OWNERS,
  group: ['adm', '', 0, -1, 1.5],
  state: ['running', 'stopped', 'up', null],
  restart: ['always', 'on-failure', 'never', 'sometimes', null],
  backoff: [{}, { initial: '1s' }, { initial: 0.1, max: '1m', reset: 30 }, { max: '1x' }, { initial: -1 }, { extra: 1 }, [], null],
  crashLoop: [{}, { failures: 3 }, { failures: 3, window: '2m' }, { failures: 0 }, { failures: 1.5 }, { window: 'x' }, { extra: 1 }, null],
  log: [
    {},
    { stdout: '/var/log/a/out.log', maxSize: '10M', keep: 3 },
    { stderr: '/var/log/err.log' },
    { maxSize: 0, keep: 0 },
    { keep: 100 },
    { keep: 101 },
    { keep: -1 },
    { keep: 1.5 },
    { maxSize: 'big' },
    { stdout: 'rel.log' },
    { stdout: '/a/../b' },
    { extra: 1 },
    ...SIZES.map((maxSize) => ({ maxSize })),
    null,
  ],
  stopSignal: ['SIGTERM', 'SIGQUIT', 'hup', 'Int', 'sigusr1', 'SIGNOPE', 'NOPE', '', 9, null],
  stopTimeout: DURATIONS,
  limits: [{}, { memory: '256M', cpu: 0.5 }, { cpu: 2 }, { cpu: 0 }, { cpu: -1 }, { cpu: '1' }, { memory: 'lots' }, { memory: 1024 }, { extra: 1 }, ...SIZES.map((memory) => ({ memory })), null],
  health: [
    { http: 'http://127.0.0.1:8080/health', interval: '2s' },
    { http: 'https://example.com' },
    { http: 'HTTP://x/' },
    { http: ' http://x/' },
    { http: 'http://x/\t' },
    { http: 'http:x' },
    { http: 'http://' },
    { http: 'http://[::1]:80/' },
    { http: 'http://exa mple/' },
    { http: 'ftp://x/' },
    { http: 'http://x:99999/' },
    { tcp: '127.0.0.1:8080' },
    { tcp: '[::1]:8080' },
    { tcp: 'host' },
    { exec: ['/bin/true'] },
    { exec: [''] },
    { exec: [] },
    { http: 'http://x/', tcp: 'x:1' },
    {},
    { tcp: 'x:1', interval: 0, timeout: '1s', failures: 1, startPeriod: '30s' },
    { tcp: 'x:1', failures: 0 },
    { tcp: 'x:1', failures: 2.5 },
    { tcp: 'x:1', timeout: 'soon' },
    { tcp: 'x:1', extra: 1 },
    'http://x/',
    null,
  ],
  reload: [{ signal: 'SIGHUP' }, { signal: 'usr2' }, { signal: 'NOPE' }, { cmd: ['/usr/sbin/nginx', '-s', 'reload'] }, { cmd: [] }, { signal: 'HUP', cmd: ['/x'] }, {}, 'SIGHUP', null],
  fence: [{ heartbeat: '/run/hb', maxAge: '1s' }],
  onAgentExit: ['keep', 'stop', 'never', null],
  extra: [1],
};

test('svc: every answer quickSvcParams gives is the schema output', () => {
  const { answered, compared } = differential({
    kind: 'svc',
    quick: quickSvcParams,
    parse: (i) => svcSchema().safeParse(i),
    defaults: () => ({}),
    names: ['web'],
    bases: [{}, { cmd: ['/usr/sbin/nginx', '-g', 'daemon off;'] }, { state: 'stopped' }],
    values: SVC_VALUES,
  });
  assert.ok(answered > 2000, `answered only ${answered} of ${compared}`);
  // The README's shape, the bench's.
  assert.notEqual(
    quickSvcParams('api', {
      cmd: ['/usr/local/bin/api', '--port', '8080'],
      user: 'www-data',
      reload: { signal: 'SIGHUP' },
      health: { http: 'http://127.0.0.1:8080/health', interval: '2s' },
      limits: { memory: '256M', cpu: 0.5 },
      log: { stdout: '/var/log/api/out.log', maxSize: '10M', keep: 3 },
    }),
    undefined,
  );
  assert.notEqual(
    quickSvcParams('nginx-bench', {
      cmd: ['/usr/sbin/nginx', '-c', '/t/nginx.conf', '-g', 'daemon off;'],
      reload: { signal: 'SIGHUP' },
      stopSignal: 'SIGQUIT',
      onAgentExit: 'keep',
      health: { http: 'http://127.0.0.1:28090/' },
    }),
    undefined,
  );
});

test('the three kinds are validated through their shortcuts, fresh copies each time, and a bad one still fails the whole build', () => {
  assert.deepEqual(pkgKind.quickParams?.('nginx', {}), quickPkgParams('nginx', {}));
  assert.deepEqual(templateKind.quickParams?.('/t', { template: 'x' }), quickTemplateParams('/t', { template: 'x' }));
  assert.deepEqual(svcKind.quickParams?.('s', { cmd: ['/bin/x'] }), quickSvcParams('s', { cmd: ['/bin/x'] }));
  // Nothing of the graph's own objects is handed on: a kind may keep its params, the graph source its own.
  const env = { A: '1' };
  const cmd = ['/bin/x'];
  const svc = quickSvcParams('s', { cmd, env });
  assert.ok(svc !== undefined && svc.env !== env && svc.cmd !== cmd);
  const vars = { a: 1 };
  const tpl = quickTemplateParams('/t', { template: '{{ vars.a }}', vars });
  assert.ok(tpl !== undefined && tpl.vars !== vars);
  const loc = { file: 'g.yaml', line: 1, col: 1 };
  const res = (kind: string, name: string, params: Record<string, unknown>) => ({ kind, name, params, meta: undefined, loc, locate: () => loc, locateMeta: () => loc });
  const build = (resources: ReturnType<typeof res>[]) => buildGraph({ source: 'g.yaml', resources, edges: [], errors: [] }, createRegistry(builtinKinds));
  const ok = build([res('pkg', 'nginx', {}), res('template', '/t/a.conf', { template: 'x {{ vars.p }}', vars: { p: 1 } }), res('svc', 'web', { cmd: ['/bin/x'], stopSignal: 'quit' })]);
  assert.deepEqual(ok.vertices.get(resourceId('pkg', 'nginx'))?.params, pkgSchema().parse({ name: 'nginx' }));
  assert.deepEqual(ok.vertices.get(resourceId('svc', 'web'))?.params, svcSchema().parse({ cmd: ['/bin/x'], stopSignal: 'quit' }));
  // The schema still has the last word on what the shortcuts leave to it, with its messages.
  for (const [bad, why] of [
    [res('pkg', 'Nginx', {}), /Debian package name/],
    [res('template', '/t/b.conf', { template: '{{ vars.nope }}' }), /vars\.nope/],
    [res('svc', 'web', { cmd: ['/bin/x'], stopSignal: 'NOPE' }), /not a signal name/],
    [res('svc', 'web', { cmd: ['/bin/x'], health: { http: 'ftp://x/' } }), /url|URL/],
  ] as const) {
    assert.throws(
      () => build([res('pkg', 'curl', {}), bad]),
      (err: unknown) => err instanceof ValidationErrors && why.test(err.message),
      String(why),
    );
  }
});
