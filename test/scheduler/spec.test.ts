import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { BackplaneError, ValidationErrors } from '../../src/errors.js';
import { MAX_SPEC_RECORD_BYTES, parseServiceText, readServiceFile, serviceJsonSchema, specSize } from '../../src/scheduler/spec.js';
import type { ServiceSpec } from '../../src/scheduler/types.js';
import { withTempDir } from '../helpers/engine.js';

const FILE = '/srv/specs/web.yaml';
const API = join(import.meta.dirname, '..', '..', 'src', 'api.ts');
const EXAMPLES = join(import.meta.dirname, '..', '..', 'examples', 'services');

const BASE = `name: web
count: 3
run:
  cmd: [python3, -m, http.server, "{{ instance.port.http }}"]
ports:
  http: {}
`;

function one(text: string): ServiceSpec {
  const specs = parseServiceText(FILE, text);
  assert.equal(specs.length, 1);
  const [s] = specs;
  assert.ok(s !== undefined);
  return s;
}

function errorsOf(text: string): readonly BackplaneError[] {
  try {
    parseServiceText(FILE, text);
  } catch (err) {
    if (err instanceof ValidationErrors) return err.errors;
    throw err;
  }
  assert.fail('expected the spec to be refused');
}

/** 1-based line of the first line containing `marker`, and the column where it starts (or where its "|" is). */
function pos(text: string, marker: string): { line: number; col: number } {
  const bar = marker.indexOf('|');
  const plain = marker.replace('|', '');
  const lines = text.split('\n');
  const i = lines.findIndex((l) => l.includes(plain));
  assert.ok(i >= 0, `marker ${marker} not in text`);
  return { line: i + 1, col: (lines[i] ?? '').indexOf(plain) + 1 + Math.max(0, bar) };
}

/** Exactly one error, at the line (and column) of `marker`, whose message matches `message`. */
function refusedAt(text: string, marker: string, message: RegExp, code = 'E_SCHEMA'): BackplaneError {
  const errors = errorsOf(text);
  assert.equal(errors.length, 1, errors.map((e) => e.format()).join('\n'));
  const [e] = errors;
  assert.ok(e !== undefined);
  assert.equal(e.code, code, e.format());
  assert.match(e.message, message, e.format());
  const { line, col } = pos(text, marker);
  assert.equal(e.where?.file, FILE);
  assert.equal(e.where?.line, line, `line of ${marker}: ${e.format()}`);
  assert.equal(e.where?.col, col, `column of ${marker}: ${e.format()}`);
  return e;
}

describe('service specs: reading', () => {
  test('a full spec reads into a ServiceSpec with every field and the documented defaults', () => {
    const s = one(`name: api
count: 4
version: "2024.1"
run:
  cmd: [/usr/bin/api, --port, "{{ instance.port.http }}"]
  env: { LOG: debug, WORKERS: 4, DEBUG: false }
  cwd: /srv/api
  user: www-data
  group: 33
  stopSignal: SIGINT
  stopTimeout: 20s
resources: { cpu: 500m, memory: 256M }
ports:
  http: {}
  admin: { static: 9000 }
  metrics: 9100
health:
  http: { port: http, path: /healthz }
  interval: 3s
  failures: 2
placement:
  constraints:
    - { label: zone, in: [a, b] }
    - { label: disk, eq: ssd }
    - { label: tier, notIn: [batch] }
  distinctHosts: true
  spread: zone
  maxPerHost: 2
  antiAffinity: [db]
  strategy: spread
restart: { attempts: 5, interval: 10m, delay: 2s }
reschedule: { attempts: 3, interval: 30m }
update: { maxParallel: 2, minHealthy: 5s, healthyDeadline: 2m, progressDeadline: 15m, canary: 1, autoPromote: true, autoRevert: false, startFirst: true }
maxUnavailable: 1
hooks:
  afterStart: [/usr/bin/api-warm, --quick]
  beforeStop: { cmd: [/usr/bin/api-drain], timeout: 2m }
  beforePromote: { cmd: [/usr/bin/api-check] }
files:
  - kind: file
    name: "/etc/api/{{ instance.id }}.conf"
    content: "port={{ instance.port.http }}\\n"
    mode: 0640
`);
    assert.equal(s.name, 'api');
    assert.equal(s.count, 4);
    assert.match(s.version, /^2024\.1\+[0-9a-f]{12}$/);
    assert.deepEqual(s.task, {
      cmd: ['/usr/bin/api', '--port', '{{ instance.port.http }}'],
      env: { LOG: 'debug', WORKERS: '4', DEBUG: 'false' },
      cwd: '/srv/api',
      user: 'www-data',
      group: 33,
      stopSignal: 'SIGINT',
      stopTimeoutMs: 20_000,
    });
    assert.deepEqual(s.resources, { cpu: 0.5, memory: 256 * 1024 * 1024 });
    assert.deepEqual(s.ports, [{ name: 'http' }, { name: 'admin', static: 9000 }, { name: 'metrics', static: 9100 }]);
    assert.deepEqual(s.health, { http: 'http://127.0.0.1:{{ instance.port.http }}/healthz', intervalMs: 3000, timeoutMs: 1000, failures: 2, graceMs: 10_000 });
    assert.deepEqual(s.placement, {
      constraints: [
        { label: 'zone', op: 'in', values: ['a', 'b'] },
        { label: 'disk', op: 'eq', values: ['ssd'] },
        { label: 'tier', op: 'not_in', values: ['batch'] },
      ],
      distinctHosts: true,
      spread: 'zone',
      maxPerHost: 2,
      antiAffinity: ['db'],
      strategy: 'spread',
    });
    assert.deepEqual(s.restart, { attempts: 5, intervalMs: 600_000, delayMs: 2000 });
    // Giving attempts makes the policy limited (unlimited: true would ignore them).
    assert.deepEqual(s.reschedule, { attempts: 3, intervalMs: 1_800_000, delayMs: 5000, maxDelayMs: 3_600_000, unlimited: false });
    assert.deepEqual(s.update, { maxParallel: 2, minHealthyMs: 5000, healthyDeadlineMs: 120_000, progressDeadlineMs: 900_000, canary: 1, autoPromote: true, autoRevert: false, startFirst: true });
    assert.equal(s.maxUnavailable, 1);
    assert.deepEqual(s.hooks, {
      afterStart: { cmd: ['/usr/bin/api-warm', '--quick'], timeoutMs: 30_000 },
      beforeStop: { cmd: ['/usr/bin/api-drain'], timeoutMs: 120_000 },
      beforePromote: { cmd: ['/usr/bin/api-check'], timeoutMs: 30_000 },
    });
    // An unquoted 0640 is what chmod means, not YAML's decimal 640.
    assert.deepEqual(s.files, [{ kind: 'file', name: '/etc/api/{{ instance.id }}.conf', params: { content: 'port={{ instance.port.http }}\n', mode: '0640' } }]);
  });

  test('defaults: Nomad-like policies scaled for fast reaction; autoRevert on; no budget, startFirst or hooks unless given', () => {
    const s = one(BASE);
    assert.equal(s.count, 3);
    assert.deepEqual(s.resources, { cpu: 0.1, memory: 128 * 1024 * 1024 });
    assert.equal(s.health, undefined);
    assert.deepEqual(s.placement, { constraints: [], distinctHosts: false, antiAffinity: [], strategy: 'binpack' });
    assert.deepEqual(s.restart, { attempts: 2, intervalMs: 1_800_000, delayMs: 1000 });
    assert.deepEqual(s.reschedule, { attempts: 0, intervalMs: 3_600_000, delayMs: 5000, maxDelayMs: 3_600_000, unlimited: true });
    // Exactly these keys: startFirst absent (its default depends on count, decided by the planner), autoRevert true.
    assert.deepEqual(s.update, { maxParallel: 1, minHealthyMs: 2000, healthyDeadlineMs: 300_000, progressDeadlineMs: 600_000, canary: 0, autoPromote: false, autoRevert: true });
    assert.ok(!('startFirst' in s.update));
    assert.ok(!('maxUnavailable' in s), 'the budget defaults in the planner (the update\'s parallelism)');
    assert.ok(!('hooks' in s));
    assert.ok(!('hooks' in one(`${BASE}hooks: {}\n`)), 'an empty hooks map is no hooks');
    assert.match(s.version, /^[0-9a-f]{12}$/);
    assert.equal(one(BASE.replace('count: 3', 'count: 1')).count, 1);
  });

  test('several services in one file; the examples read', async () => {
    const specs = parseServiceText(FILE, `services:\n  - ${BASE.trimEnd().split('\n').join('\n    ')}\n  - name: worker\n    run: { cmd: [sleep, infinity] }\n`);
    assert.deepEqual(
      specs.map((s) => [s.name, s.count]),
      [
        ['web', 3],
        ['worker', 1],
      ],
    );
    const web = await readServiceFile(join(EXAMPLES, 'web.yaml'));
    assert.equal(web[0]?.name, 'web');
    const proxy = await readServiceFile(join(EXAMPLES, 'proxy.yaml'));
    assert.equal(proxy[0]?.name, 'proxy');
  });
});

describe('service specs: bad input is refused with its file:line:col', () => {
  test('unknown keys, at the key, with a suggestion', () => {
    assert.match(refusedAt(`${BASE}coutn: 3\n`, 'coutn', /unknown key "coutn"/).hint ?? '', /count/);
    const nested = BASE.replace('run:\n', 'run:\n  evn: { A: b }\n');
    assert.match(refusedAt(nested, 'evn', /unknown key "run.evn"/).hint ?? '', /env/);
    refusedAt(`${BASE}placement: { constraints: [{ label: zone, eq: a, neq: b }] }\n`, 'neq', /unknown key "placement.constraints.0.neq"/);
    refusedAt(BASE.replace('http: {}', 'http: { statik: 80 }'), 'statik', /unknown key "ports.http.statik"/);
  });

  test('cpu and memory that do not parse, at the value', () => {
    refusedAt(`${BASE}resources: { cpu: lots }\n`, 'lots', /"resources.cpu": "lots" is not a cpu amount/);
    refusedAt(`${BASE}resources:\n  memory: 12 parsecs\n`, '12 parsecs', /"resources.memory": "12 parsecs" is not a size/);
    refusedAt(`${BASE}resources:\n  memory: 10K\n`, '10K', /below 1M/);
  });

  test('count < 0 and a count that is not a whole number', () => {
    refusedAt(BASE.replace('count: 3', 'count: -1'), '-1', /count is a whole number >= 0/);
    refusedAt(BASE.replace('count: 3', 'count: 2.5'), '2.5', /count is a whole number/);
  });

  test('ports: out of range, not a number, a bad name, duplicate names and duplicate static ports', () => {
    refusedAt(BASE.replace('http: {}', 'http: { static: 70000 }'), '70000', /from 1 to 65535/);
    refusedAt(BASE.replace('http: {}', 'http: 0'), 'http: |0', /from 1 to 65535/);
    refusedAt(BASE.replace('http: {}', 'Http_X: {}'), 'Http_X', /port name/);
    const list = BASE.replace('ports:\n  http: {}\n', 'ports:\n  - { name: http }\n  - { name: admin, static: 9000 }\n  - {name: http}\n');
    refusedAt(list, '{name: http}', /port "http" is declared twice/);
    const statics = BASE.replace('http: {}', 'http: {static: 8080}\n  alt: { static: 8080 }');
    refusedAt(statics, 'static: |8080 }', /static port 8080 is given to both "http" and "alt"/);
    refusedAt(BASE.replace('http: {}', 'ht_tp: {}\n  ht-tp: {}'), 'ht-tp', /ports "ht_tp" and "ht-tp" both become PORT_HT_TP/);
  });

  test('an invalid service name, a missing name and cmd', () => {
    refusedAt(BASE.replace('name: web', 'name: Web_1'), 'Web_1', /must be 1-63 characters/);
    refusedAt(BASE.replace('name: web\n', ''), 'count', /"name" is required/);
    refusedAt(BASE.replace(/run:\n.*\n/, 'run: {}\n'), 'run', /"run.cmd" is required/);
  });

  test('health names a port the service does not declare; exactly one check', () => {
    refusedAt(`${BASE}health: { http: { port: htp } }\n`, 'port: |htp', /declares no port "htp"/);
    refusedAt(`${BASE}health:\n  interval: 1s\n`, 'health', /exactly one of http, tcp or exec/);
  });

  test('unknown template variables, at the string that uses them', () => {
    const typo = BASE.replace('"{{ instance.port.http }}"', '"{{ instance.prot.http }}"');
    refusedAt(typo, '"{{ instance.prot', /"instance.prot.http" is not an instance value/);
    const port = BASE.replace('"{{ instance.port.http }}"', '"{{ instance.port.admin }}"');
    assert.match(refusedAt(port, '"{{ instance.port.admin', /declares no port "admin"/).hint ?? '', /http/);
    const root = BASE.replace('"{{ instance.port.http }}"', '"{{ instanse.index }}"');
    assert.match(refusedAt(root, '"{{ instanse', /unknown variable "instanse"/).hint ?? '', /did you mean instance/);
    const fact = `${BASE}  # x\nfiles:\n  - kind: file\n    name: /tmp/{{ instance.id }}\n    content: "{{ host.facts.ipv5 }}"\n`;
    assert.match(refusedAt(fact, '"{{ host.facts.ipv5', /"host.facts.ipv5" is not a fact/).hint ?? '', /ipv4/);
  });

  test('a files entry is checked against its kind once rendered: a wrong parameter, an unknown kind, a Liquid typo', () => {
    const files = (body: string): string => `${BASE}files:\n${body}`;
    refusedAt(files('  - kind: file\n    name: "/tmp/{{ instance.id }}"\n    contnet: hi\n'), 'contnet', /unknown parameter "contnet"/);
    refusedAt(files('  - kind: file\n    name: "tmp/{{ instance.id }}"\n'), '"tmp/', /absolute path/);
    refusedAt(files('  - kind: fiel\n    name: "/tmp/{{ instance.id }}"\n'), '- |kind: fiel', /unknown resource kind "fiel"/, 'E_UNKNOWN_KIND');
    refusedAt(files('  - kind: file\n    name: "/tmp/{{ instance.id }}"\n    meta: { retyr: 2 }\n'), 'retyr', /unknown meta "retyr"/);
    // A template's text is Liquid: instance values are vars.instance there, and the kind says so at deploy time.
    const liquid = files('  - kind: template\n    name: "/tmp/{{ instance.id }}.conf"\n    template: "listen {{ instance.port.http }}"\n');
    refusedAt(liquid, 'template: "listen', /unknown variable "instance"/);
    const reserved = files('  - kind: template\n    name: "/tmp/{{ instance.id }}.conf"\n    template: "x"\n    vars: { instance: 1 }\n');
    refusedAt(reserved, 'instance: 1', /vars.instance is set by the scheduler/);
    refusedAt(files('  - kind: file\n    name: "/tmp/{{ instance.id }}"\n    notify: [svc:x]\n'), 'notify', /"notify" is not supported/);
  });

  test('a file whose name does not vary per instance would be declared twice on a shared host', () => {
    const shared = `${BASE}files:\n  - kind: file\n    name: /etc/web.conf\n    content: hi\n`;
    const e = refusedAt(shared, '- |kind: file', /two instances on one host would both declare this resource/, 'E_DUPLICATE');
    assert.match(e.hint ?? '', /instance\.id/);
    // Two files of different names on one path are the same clash.
    const samePath = `${BASE}files:\n  - kind: file\n    name: "/etc/web-{{ instance.index }}.conf"\n    path: /etc/web.conf\n`;
    refusedAt(samePath, '- |kind: file', /two instances on one host/, 'E_OVERLAP');
    // Fine when instances never share a host.
    assert.equal(one(`${shared}placement: { distinctHosts: true }\n`).files.length, 1);
  });

  test('the scheduler\'s own environment cannot be overridden; a contradictory reschedule policy', () => {
    refusedAt(BASE.replace('run:\n', 'run:\n  env: { PORT_HTTP: "1" }\n'), 'PORT_HTTP', /set by the scheduler/);
    refusedAt(`${BASE}reschedule: { attempts: 3, unlimited: true }\n`, 'attempts: |3', /attempts has no effect with unlimited/);
  });

  test('a spec too large for one store request is E_LIMIT naming the file', () => {
    const big = `${BASE}files:\n  - kind: file\n    name: "/tmp/{{ instance.id }}"\n    content: "${'\\"'.repeat(300_000)}"\n`;
    const errors = errorsOf(big);
    assert.equal(errors.length, 1);
    const [e] = errors;
    assert.equal(e?.code, 'E_LIMIT');
    assert.match(e?.message ?? '', /service "web" in \/srv\/specs\/web.yaml is \d+ bytes once signed and assigned/);
    assert.equal(e?.where?.line, 1);
    // 300,000 quotes are 300 KB of YAML but escaped four times over in an assignment they pass the limit.
    const small = one(`${BASE}files:\n  - kind: file\n    name: "/tmp/{{ instance.id }}"\n    content: "${'x'.repeat(300_000)}"\n`);
    assert.ok(specSize(small) < MAX_SPEC_RECORD_BYTES);
  });

  test('empty files, syntax errors, several services with one name, every error at once', () => {
    refusedAt('', '', /the service file is empty/);
    const syntax = errorsOf(`${BASE}  bad: [\n`);
    assert.equal(syntax[0]?.code, 'E_YAML');
    refusedAt(`services:\n  - ${BASE.trimEnd().split('\n').join('\n    ')}\n  - {name: web, run: {cmd: [x]}}\n`, 'name: web, run', /service "web" is declared twice/);
    const many = errorsOf(BASE.replace('count: 3', 'count: -1').replace('name: web', 'name: WEB'));
    assert.equal(many.length, 2);
  });
});

describe('service specs: update policy, disruption budget and hooks', () => {
  const update = (body: string): ServiceSpec['update'] => one(`${BASE}update: ${body}\n`).update;

  test('strategy: serial is one at a time, parallel all at once (0), rolling maxParallel (default 1)', () => {
    assert.equal(update('{ strategy: serial }').maxParallel, 1);
    assert.equal(update('{ strategy: serial, maxParallel: 1 }').maxParallel, 1, 'agrees with serial');
    assert.equal(update('{ strategy: parallel }').maxParallel, 0);
    assert.equal(update('{ strategy: rolling, maxParallel: 3 }').maxParallel, 3);
    assert.equal(update('{ strategy: rolling }').maxParallel, 1);
    assert.equal(update('{ maxParallel: 2 }').maxParallel, 2, 'rolling is the default strategy');
  });

  test('a strategy contradicted by maxParallel, an unknown strategy, maxParallel 0, at the value', () => {
    refusedAt(`${BASE}update: { strategy: serial, maxParallel: 2 }\n`, 'maxParallel: |2', /strategy serial replaces one instance at a time, not 2/);
    refusedAt(`${BASE}update: { strategy: parallel, maxParallel: 2 }\n`, 'maxParallel: |2', /strategy parallel replaces every instance at once/);
    refusedAt(`${BASE}update: { strategy: canary }\n`, 'strategy: |canary', /"update.strategy"/);
    refusedAt(`${BASE}update: { maxParallel: 0 }\n`, 'maxParallel: |0', /"update.maxParallel"/);
  });

  test('each policy key is read: deadlines, canary, autoPromote, autoRevert, startFirst', () => {
    assert.equal(update('{ progressDeadline: 0 }').progressDeadlineMs, 0, '0 = no deadline');
    assert.equal(update('{ progressDeadline: 1h, healthyDeadline: 20m }').progressDeadlineMs, 3_600_000);
    assert.equal(update('{ progressDeadline: 5m }').progressDeadlineMs, 300_000, 'equal to healthyDeadline is enough');
    assert.equal(update('{ progressDeadline: 1m, healthyDeadline: 0 }').healthyDeadlineMs, 0);
    assert.equal(update('{ canary: 2 }').canary, 2);
    assert.equal(update('{ canary: 3 }').canary, 3, 'every instance may be a canary');
    assert.equal(one(`${BASE.replace('count: 3', 'count: 0')}update: { canary: 2 }\n`).update.canary, 2, 'a service scaled to 0 keeps its policy');
    assert.equal(update('{ autoPromote: true }').autoPromote, true, 'without canaries: nothing to promote, no error');
    assert.equal(update('{ autoRevert: false }').autoRevert, false);
    assert.equal(update('{ startFirst: false }').startFirst, false);
    assert.equal(update('{ startFirst: true }').startFirst, true);
  });

  test('progressDeadline shorter than healthyDeadline is refused at the one written', () => {
    refusedAt(`${BASE}update: { progressDeadline: 1m }\n`, 'progressDeadline: |1m', /update.progressDeadline \(1m\) is shorter than update.healthyDeadline \(5m\)/);
    // healthyDeadline above the default progressDeadline: the operator wrote healthyDeadline, so that is where.
    refusedAt(`${BASE}update:\n  healthyDeadline: 15m\n`, 'healthyDeadline: |15m', /\(10m\) is shorter than update.healthyDeadline \(15m\)/);
    refusedAt(`${BASE}update: { healthyDeadline: 15m, progressDeadline: 90s }\n`, 'progressDeadline: |90s', /\(90s\) is shorter/);
  });

  test('canary: more than count, negative, not whole; beforePromote without canaries', () => {
    const e = refusedAt(`${BASE}update:\n  canary: 4\n`, 'canary: |4', /update.canary \(4\) is more than count \(3\)/);
    assert.match(e.hint ?? '', /lower it or raise count/);
    refusedAt(`${BASE}update: { canary: -1 }\n`, 'canary: |-1', /canary is a whole number >= 0/);
    refusedAt(`${BASE}update: { canary: 1.5 }\n`, 'canary: |1.5', /canary is a whole number/);
    const p = refusedAt(`${BASE}hooks:\n  beforePromote: [/bin/check]\n`, 'beforePromote', /hooks.beforePromote is given but the service has no canaries/);
    assert.match(p.hint ?? '', /beforePromote runs on canaries before promotion; set update.canary/);
    assert.ok(one(`${BASE}update: { canary: 1 }\nhooks:\n  beforePromote: [/bin/check]\n`).hooks?.beforePromote);
  });

  test('maxUnavailable: any whole number >= 0, more than count included', () => {
    assert.equal(one(`${BASE}maxUnavailable: 0\n`).maxUnavailable, 0);
    assert.equal(one(`${BASE}maxUnavailable: 5\n`).maxUnavailable, 5, 'more than count caps at count in the planner');
    refusedAt(`${BASE}maxUnavailable: -1\n`, 'maxUnavailable: |-1', /maxUnavailable is a whole number >= 0/);
    refusedAt(`${BASE}maxUnavailable: 1.5\n`, 'maxUnavailable: |1.5', /maxUnavailable is a whole number/);
  });

  test('the old top-level minHealthy says what replaced it; update.minHealthy (a duration) stays', () => {
    const e = refusedAt(`${BASE}minHealthy: 2\n`, 'minHealthy', /"minHealthy" was replaced by "maxUnavailable": how many instances may be down at once/);
    assert.match(e.hint ?? '', /maxUnavailable: count - the old minHealthy/);
    const list = `services:\n  - ${BASE.trimEnd().split('\n').join('\n    ')}\n    minHealthy: 1\n`;
    refusedAt(list, 'minHealthy', /replaced by "maxUnavailable"/);
    assert.equal(update('{ minHealthy: 3s }').minHealthyMs, 3000);
  });

  test('hooks: argv or { cmd, timeout }; unknown names with a suggestion; bad timeouts and commands at the value', () => {
    const hooks = (body: string) => one(`${BASE}hooks:\n${body}`).hooks;
    assert.deepEqual(hooks('  beforeStop: [curl, -fsS, "http://127.0.0.1:9000/drain"]\n'), { beforeStop: { cmd: ['curl', '-fsS', 'http://127.0.0.1:9000/drain'], timeoutMs: 30_000 } });
    assert.deepEqual(hooks('  afterStart: { cmd: [/bin/warm], timeout: 1h }\n'), { afterStart: { cmd: ['/bin/warm'], timeoutMs: 3_600_000 } });
    assert.match(refusedAt(`${BASE}hooks:\n  afterStrat: [/bin/warm]\n`, 'afterStrat', /unknown key "hooks.afterStrat"/).hint ?? '', /did you mean "afterStart"/);
    assert.match(refusedAt(`${BASE}hooks:\n  beforeStop: { cmd: [/bin/x], timout: 5s }\n`, 'timout', /unknown key "hooks.beforeStop.timout"/).hint ?? '', /did you mean "timeout"/);
    refusedAt(`${BASE}hooks:\n  beforeStop: { cmd: [/bin/x], timeout: 2h }\n`, 'timeout: |2h', /more than 0 and at most 1h/);
    refusedAt(`${BASE}hooks:\n  beforeStop: { cmd: [/bin/x], timeout: 0 }\n`, 'timeout: |0', /more than 0 and at most 1h/);
    refusedAt(`${BASE}hooks:\n  beforeStop: { cmd: [/bin/x], timeout: soon }\n`, 'timeout: |soon', /"soon" is not a duration/);
    refusedAt(`${BASE}hooks:\n  afterStart: /bin/warm --now\n`, 'afterStart: |/bin', /a hook is a list of strings \(argv, no shell\)/);
    refusedAt(`${BASE}hooks:\n  afterStart: []\n`, 'afterStart', /needs at least the program/);
    refusedAt(`${BASE}hooks:\n  afterStart: { timeout: 5s }\n`, 'afterStart', /"hooks.afterStart.cmd" is required/);
  });
});

describe('service specs: version', () => {
  test('changes on an edit of what an instance is, not on count or rollout policy', () => {
    const v = one(BASE).version;
    assert.equal(one(BASE).version, v, 'deterministic');
    assert.equal(one(BASE.replace('count: 3', 'count: 7')).version, v, 'scaling never rolls');
    assert.equal(one(`${BASE}update: { maxParallel: 2 }\nreschedule: { delay: 10s }\n`).version, v, 'rollout policy is not the instance');
    const policy = 'update: { strategy: parallel, canary: 1, autoPromote: true, autoRevert: false, startFirst: true, progressDeadline: 0, minHealthy: 9s }\n';
    assert.equal(one(`${BASE}${policy}`).version, v, 'no update key is the instance');
    assert.equal(one(`${BASE}maxUnavailable: 2\n`).version, v, 'the disruption budget is not the instance');
    assert.equal(one(`${BASE}hooks:\n  afterStart: [/bin/warm]\n  beforeStop: { cmd: [/bin/drain], timeout: 1m }\n`).version, v, 'hooks are not the instance');
    assert.notEqual(one(BASE.replace('http.server', 'http.server2')).version, v, 'the command');
    assert.notEqual(one(`${BASE}resources: { memory: 256M }\n`).version, v, 'resources');
    assert.notEqual(one(`${BASE}files:\n  - kind: file\n    name: "/tmp/{{ instance.id }}"\n`).version, v, 'files');
    // Key order is not an edit.
    assert.equal(one(BASE.replace('name: web\ncount: 3\n', 'count: 3\nname: web\n')).version, v);
  });

  test('a label keeps the hash beside it, so an edit without a new label still rolls', () => {
    const a = one(`${BASE}version: v2\n`).version;
    const b = one(`${BASE.replace('http.server', 'http.server2')}version: v2\n`).version;
    assert.match(a, /^v2\+[0-9a-f]{12}$/);
    assert.notEqual(a, b);
  });
});

describe('service specs: modules and schema', () => {
  test('a TypeScript module: a ServiceDecl, a list, or a function; errors name the value path', async () => {
    await withTempDir(async (dir) => {
      const ts = join(dir, 'web.ts');
      await writeFile(
        ts,
        `import type { ServiceDecl } from '${API}';
const web = (n: number): ServiceDecl => ({
  name: 'web', count: n,
  run: { cmd: ['python3', '-m', 'http.server', '{{ instance.port.http }}'] },
  ports: { http: {} },
  files: [{ kind: 'file', name: '/tmp/{{ instance.id }}', content: 'hi' }],
});
export default () => [web(2), { ...web(1), name: 'web2' }];
`,
      );
      const specs = await readServiceFile(ts);
      assert.deepEqual(
        specs.map((s) => [s.name, s.count]),
        [
          ['web', 2],
          ['web2', 1],
        ],
      );
      assert.match(specs[0]?.version ?? '', /^[0-9a-f]{12}$/);
      // The same spec written in YAML is the same version: the hash is of the spec, not of how it was written.
      const yaml = one(`${BASE}files:\n  - { kind: file, name: "/tmp/{{ instance.id }}", content: hi }\n`);
      assert.equal(specs[0]?.version, yaml.version);

      const mjs = join(dir, 'one.mjs');
      await writeFile(mjs, `export default { name: 'solo', run: { cmd: ['sleep', 'infinity'] }, resources: { cpu: 'many' } };\n`);
      const err = await readServiceFile(mjs).then(
        () => assert.fail('expected an error'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof ValidationErrors);
      assert.equal(err.errors[0]?.where?.file, `${mjs}: resources.cpu`);

      const throws = join(dir, 'throws.ts');
      await writeFile(throws, `export default () => {\n  throw new Error('no');\n};\n`);
      const t = await readServiceFile(throws).then(
        () => assert.fail('expected an error'),
        (e: unknown) => e,
      );
      assert.ok(t instanceof ValidationErrors);
      assert.match(t.errors[0]?.message ?? '', /the service function threw: no/);
    });
  });

  test('the JSON Schema covers the spec and the files kinds', () => {
    const schema = serviceJsonSchema() as { $defs: { service: { properties: Record<string, { items?: { oneOf?: unknown[] } }>; additionalProperties: boolean } } };
    const props = schema.$defs.service.properties;
    for (const key of ['name', 'count', 'version', 'run', 'resources', 'ports', 'health', 'placement', 'restart', 'reschedule', 'update', 'maxUnavailable', 'hooks', 'files']) {
      assert.ok(key in props, key);
    }
    assert.equal(schema.$defs.service.additionalProperties, false);
    assert.ok((props['files']?.items?.oneOf?.length ?? 0) > 5);
    JSON.stringify(schema);
  });
});
