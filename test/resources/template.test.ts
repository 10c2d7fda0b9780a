import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { Liquid } from 'liquidjs';
import { BackplaneError, ValidationErrors } from '../../src/errors.js';
import { parseGraphText } from '../../src/frontends/load.js';
import { buildGraph } from '../../src/graph/build.js';
import { resourceId } from '../../src/graph/ids.js';
import { builtinKinds } from '../../src/resources/builtin-kinds.js';
import { createRegistry } from '../../src/resources/registry.js';
import { plainTemplate, renderPlain, templateKind } from '../../src/resources/template.js';
import type { CheckResult, Resource, ResourceLog, ResourceWorld } from '../../src/resources/types.js';
import { harness, until } from '../helpers/engine.js';
import { testWorld } from '../helpers/world.js';
import { rejection } from '../helpers/assert.js';
import { ROOT } from '../helpers/cli.js';

const ID = resourceId('template', 'test');
const quiet: ResourceLog = { change: () => undefined, info: () => undefined, warn: () => undefined, debug: () => undefined };
// One world whose (unused) state root is removed at the end: testWorld() alone leaves a directory per call.
const stateRoot = mkdtempSync(join(tmpdir(), 'bp-state-'));
const world: ResourceWorld = testWorld({ stateRoot });
const facts = world.facts();
after(() => rm(stateRoot, { recursive: true, force: true }));

function make(params: Record<string, unknown>): Resource {
  return templateKind.create(ID, templateKind.schema.parse(params), world);
}

function run(res: Resource, opts: { apply?: boolean } = {}): Promise<CheckResult> {
  return res.checkApply({ apply: opts.apply ?? true, refresh: false, signal: new AbortController().signal, log: quiet });
}


const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'bp-template-'));
  dirs.push(d);
  return d;
}
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const registry = createRegistry([...builtinKinds, templateKind]);
const GRAPH = '/test/graph.yaml';

function buildErrors(text: string): readonly BackplaneError[] {
  try {
    buildGraph(parseGraphText(GRAPH, text), registry);
  } catch (err) {
    if (err instanceof ValidationErrors) return err.errors;
    throw err;
  }
  return assert.fail('expected the graph to be rejected');
}

describe('template: rendering', () => {
  test('renders facts and vars into the file, then is converged', async () => {
    const dir = await tempDir();
    const path = join(dir, 'app.conf');
    const res = make({
      path,
      template: 'host={{ facts.hostname }} cpus={{ facts.cpus }} mem={{ facts.memory.total }} ip={{ facts.ipv4 }}\nport={{ vars.port }}\n',
      vars: { port: 8080 },
      mode: '0640',
    });
    const first = await run(res);
    assert.deepEqual(first, { converged: false, changes: ['created'] });
    assert.equal(await readFile(path, 'utf8'), `host=${facts.hostname} cpus=${facts.cpus} mem=${facts.memory.total} ip=${facts.ipv4}\nport=8080\n`);
    assert.equal((await stat(path)).mode & 0o7777, 0o640);
    assert.deepEqual(await run(res), { converged: true, changes: [] });
  });

  test('loops, conditions and filters work over vars; absent host-specific facts can be tested for', async () => {
    const dir = await tempDir();
    const path = join(dir, 'upstream.conf');
    await run(
      make({
        path,
        template: [
          '{% for b in vars.backends %}server {{ b.host }}:{{ b.port | default: 80 }};\n{% endfor %}',
          '{% if facts.interfaces.bp_no_such_if %}never{% else %}no such interface{% endif %}\n',
          '{{ facts.interfaces.bp_no_such_if | default: "fallback" }}\n',
          '{{ vars.name | upcase }} {{ vars.backends | size }} {{ vars.backends | map: "host" | join: "," }}\n',
          '{{ vars.tags | json }}\n',
        ].join(''),
        vars: { name: 'web', backends: [{ host: 'a', port: 81 }, { host: 'b' }], tags: { tier: 'front' } },
      }),
    );
    assert.equal(
      await readFile(path, 'utf8'),
      'server a:81;\nserver b:80;\nno such interface\nfallback\nWEB 2 a,b\n{"tier":"front"}\n',
    );
  });

  test('drift in the rendered file is repaired; noop shows the diff and changes nothing', async () => {
    const dir = await tempDir();
    const path = join(dir, 'motd');
    const res = make({ path, template: 'welcome to {{ vars.site }}\n', vars: { site: 'alpha' } });
    await run(res);
    await writeFile(path, 'edited by hand\n');
    const noop = await run(res, { apply: false });
    assert.equal(noop.converged, false);
    assert.deepEqual(noop.changes, ['content changed']);
    assert.match(noop.diff ?? '', /^-edited by hand$/m);
    assert.match(noop.diff ?? '', /^\+welcome to alpha$/m);
    assert.equal(await readFile(path, 'utf8'), 'edited by hand\n');
    assert.deepEqual(await run(res), { converged: false, changes: ['content changed'] });
    assert.equal(await readFile(path, 'utf8'), 'welcome to alpha\n');
  });

  test('state: absent removes the file without rendering anything', async () => {
    const dir = await tempDir();
    const path = join(dir, 'old.conf');
    await writeFile(path, 'x');
    assert.deepEqual(await run(make({ path, state: 'absent' })), { converged: false, changes: ['removed'] });
    assert.equal(existsSync(path), false);
  });

  test('a source template file is rendered, re-read on every run, and watched', async () => {
    const dir = await tempDir();
    const source = join(dir, 'app.conf.liquid');
    const path = join(dir, 'app.conf');
    await writeFile(source, 'port={{ vars.port }}\n');
    const res = make({ path, source, vars: { port: 80, workers: 4 } });
    await run(res);
    assert.equal(await readFile(path, 'utf8'), 'port=80\n');

    const ac = new AbortController();
    const events: string[] = [];
    let ready = false;
    const watching = res.watch?.({ signal: ac.signal, ready: () => (ready = true), changed: (r) => events.push(r), log: quiet });
    try {
      await until(() => ready, 5000, 'watch ready');
      await writeFile(source, 'port={{ vars.port }}\nworkers={{ vars.workers }}\n');
      await until(() => events.length > 0, 5000, 'an event for the edited template');
      assert.deepEqual(await run(res), { converged: false, changes: ['content changed'] });
      assert.equal(await readFile(path, 'utf8'), 'port=80\nworkers=4\n');
      const before = events.length;
      await writeFile(path, 'tampered');
      await until(() => events.length > before, 5000, 'an event for the rendered file');
    } finally {
      ac.abort();
      await watching;
    }
  });

  test('a missing source is a retryable error; it renders once the file exists', async () => {
    const dir = await tempDir();
    const source = join(dir, 'later.liquid');
    const res = make({ path: join(dir, 'out'), source });
    const err = await rejection(run(res));
    assert.equal(err.code, 'E_APPLY');
    assert.equal(err.retryable, true);
    assert.equal(err.message, `template file ${source} does not exist`);
    await writeFile(source, 'hi {{ facts.hostname }}');
    assert.equal((await run(res)).converged, false);
    assert.equal(await readFile(join(dir, 'out'), 'utf8'), `hi ${facts.hostname}`);
  });
});

describe('template: errors point into the template', () => {
  test('a misspelt var in a source template names the file, line and column — even in a branch not taken', async () => {
    const dir = await tempDir();
    const source = join(dir, 't.liquid');
    await writeFile(source, 'a\nlisten {{ vars.port }}\n{% if false %}   {{ vars.prot }}{% endif %}\n');
    const err = await rejection(run(make({ path: join(dir, 'out'), source, vars: { port: 80 } })));
    assert.equal(err.code, 'E_APPLY');
    assert.equal(err.retryable, false);
    assert.equal(err.message, `cannot render: ${source} line 3, col 21: "vars.prot" is not declared in vars; did you mean vars.port?`);
    assert.deepEqual(err.where, { file: source, line: 3, col: 21 });
    assert.equal(existsSync(join(dir, 'out')), false, 'nothing is written from a broken template');
  });

  test('a fact this host lacks is an error at render time, with its line and a hint', async () => {
    const dir = await tempDir();
    const err = await rejection(run(make({ path: join(dir, 'out'), template: 'x\n  {{ facts.interfaces.bp_no_such_if.address }}' })));
    assert.equal(err.message, 'cannot render: template line 2, col 6: undefined variable "facts.interfaces.bp_no_such_if"');
    assert.match(err.hint ?? '', /\{% if facts/);
  });

  test('a syntax error in a source template is reported with its position; fixing the file fixes the resource', async () => {
    const dir = await tempDir();
    const source = join(dir, 't.liquid');
    await writeFile(source, 'ok\n{% for x in vars.list %}{{ x }}\n');
    const res = make({ path: join(dir, 'out'), source, vars: { list: [1, 2] } });
    const err = await rejection(run(res));
    assert.equal(err.message, `cannot render: ${source} line 2, col 1: tag {% for x in vars.list %} not closed`);
    await writeFile(source, 'ok\n{% for x in vars.list %}{{ x }}{% endfor %}\n');
    await run(res);
    assert.equal(await readFile(join(dir, 'out'), 'utf8'), 'ok\n12\n');
  });

  test('an inline template with a syntax error is a graph error at the resource\'s file:line', () => {
    const errors = buildErrors(`resources:
  - kind: template
    name: /etc/app.conf
    template: |
      listen {{ vars.port }}
      {% if vars.port > 80 %}high
    vars: { port: 8080 }
`);
    assert.equal(errors.length, 1);
    const e = errors[0];
    assert.equal(e?.code, 'E_SCHEMA');
    assert.equal(e?.format().split('\n')[0], `${GRAPH}:4:5: template[/etc/app.conf]: parameter "template": template line 2, col 1: tag {% if vars.port > 80 %} not closed`);
  });

  test('an inline template using undeclared names is a graph error listing each with a suggestion', () => {
    const errors = buildErrors(`resources:
  - kind: template
    name: /etc/app.conf
    template: "{{ vars.prot }} {{ facts.hostnme }} {{ hostname }} {{ vars.port | nosuchfilter }}"
    vars: { port: 8080 }
`);
    const messages = errors.map((e) => e.message);
    assert.deepEqual(messages, [
      'parameter "template": template line 1, col 52: undefined filter: nosuchfilter',
    ]);
    const names = buildErrors(`resources:
  - kind: template
    name: /etc/app.conf
    template: "{{ vars.prot }} {{ facts.hostnme }} {{ hostname }}"
    vars: { port: 8080 }
`).map((e) => e.message);
    assert.deepEqual(names, [
      'parameter "template": template line 1, col 4: "vars.prot" is not declared in vars; did you mean vars.port?',
      'parameter "template": template line 1, col 20: "facts.hostnme" is not a fact; did you mean facts.hostname?',
      'parameter "template": template line 1, col 40: unknown variable "hostname" (did you mean facts.hostname?)',
    ]);
  });

  test('include, render and layout are refused: a template cannot read files nobody watches', () => {
    for (const tag of ['include', 'render', 'layout']) {
      const r = templateKind.schema.safeParse({ path: '/x', template: `a\n{% ${tag} "other" %}` });
      assert.ok(!r.success);
      assert.match(r.error.issues[0]?.message ?? '', new RegExp(`^template line 2, col 1: \\{% ${tag} %\\} is not supported`));
    }
  });

  test('schema: exactly one of template and source', () => {
    assert.match(templateKind.schema.safeParse({ path: '/x' }).error?.issues[0]?.message ?? '', /needs template .* or source/);
    assert.match(templateKind.schema.safeParse({ path: '/x', template: 'a', source: '/t' }).error?.issues[0]?.message ?? '', /not both/);
    assert.ok(templateKind.schema.safeParse({ path: '/x', state: 'absent' }).success);
    assert.ok(!templateKind.schema.safeParse({ path: 'relative', template: 'a' }).success);
  });
});

describe('template: in a graph', () => {
  test('auto-edges: provides its path, wants its directories and its source', () => {
    const p = templateKind.schema.parse({ path: '/etc/app/app.conf', source: '/srv/templates/app.liquid' });
    assert.deepEqual(templateKind.autoEdges?.(p), {
      provides: ['path:/etc/app/app.conf'],
      wants: ['path:/etc/app', 'path:/etc', 'path:/srv/templates/app.liquid'],
    });
  });

  test('a template rendered from a file another resource writes waits for it, and follows its edits', async () => {
    const dir = await tempDir();
    const source = join(dir, 'site.liquid');
    const out = join(dir, 'site.conf');
    const h = harness([templateKind]);
    const graph = (text: string): string => `resources:
  - { kind: template, name: ${out}, source: ${source}, vars: { port: 8080 } }
  - kind: file
    name: ${source}
    content: ${JSON.stringify(text)}
`;
    await h.engine.setGraph(h.graph(graph('listen {{ vars.port }};\n')));
    try {
      await h.settled();
      assert.equal(h.engine.summary().ok, true);
      assert.equal(await readFile(out, 'utf8'), 'listen 8080;\n');
      // The template file's resource changes it; the template re-renders through its watch.
      await h.engine.setGraph(h.graph(graph('listen {{ vars.port }} default_server;\n')));
      await until(async () => (await readFile(out, 'utf8')) === 'listen 8080 default_server;\n', 5000, 're-render');
    } finally {
      await h.engine.stop();
    }
  });
});

describe('template: the engine', () => {
  test('an inline template is parsed once: the resource renders what the schema check compiled', async (t) => {
    const parse = t.mock.method(Liquid.prototype, 'parse');
    const out = join(await tempDir(), 'once.conf');
    const h = harness([templateKind]);
    await h.engine.setGraph(h.graph(`resources:\n  - { kind: template, name: ${out}, template: "port {{ vars.port | plus: 1 }}", vars: { port: 81 } }\n`));
    try {
      await h.settled();
      assert.equal(await readFile(out, 'utf8'), 'port 82');
      assert.equal(parse.mock.callCount(), 1);
    } finally {
      await h.engine.stop();
    }
  });

  test('a template of text and names only renders without liquidjs, to the very text liquidjs gives', async (t) => {
    const parse = t.mock.method(Liquid.prototype, 'parse');
    const render = t.mock.method(Liquid.prototype, 'render');
    const dir = await tempDir();
    const src = join(dir, 'nginx.conf.liquid');
    await writeFile(src, 'server {\n  listen {{vars.port}};\n  root {{ vars.paths.root }}/www;  # {{\n facts.hostname\n}}\n}}\n');
    const h = harness([templateKind]);
    const graph =
      `resources:\n` +
      `  - { kind: template, name: ${join(dir, 'inline.conf')}, template: "port {{ vars.port }} {{ vars.on }} {{ vars.ratio }} }} %}", vars: { port: 81, on: true, ratio: -1.5 } }\n` +
      `  - { kind: template, name: ${join(dir, 'file.conf')}, source: ${src}, vars: { port: 8080, paths: { root: /srv } } }\n`;
    await h.engine.setGraph(h.graph(graph));
    try {
      await h.settled();
      assert.equal(await readFile(join(dir, 'inline.conf'), 'utf8'), 'port 81 true -1.5 }} %}');
      assert.equal(await readFile(join(dir, 'file.conf'), 'utf8'), `server {\n  listen 8080;\n  root /srv/www;  # ${facts.hostname}\n}}\n`);
      assert.equal(parse.mock.callCount(), 0, 'liquidjs parsed a plain template');
      assert.equal(render.mock.callCount(), 0, 'liquidjs rendered a plain template');
    } finally {
      await h.engine.stop();
    }
  });

  test('a plain template whose value liquidjs must render is parsed by it once, not on every run', async (t) => {
    const out = join(await tempDir(), 'list.conf');
    const res = make({ path: out, template: 'hosts {{ vars.hosts }}', vars: { hosts: ['a', 'b'] } });
    const parse = t.mock.method(Liquid.prototype, 'parse');
    await run(res);
    await writeFile(out, 'edited');
    await run(res);
    assert.equal(await readFile(out, 'utf8'), 'hosts ab');
    assert.equal(parse.mock.callCount(), 1);
  });

  test('plain rendering agrees with liquidjs on every template it takes, and leaves the rest to it', async () => {
    const engine = new Liquid({ strictVariables: true, strictFilters: true, lenientIf: true, ownPropertyOnly: true });
    const vars: Record<string, unknown> = {
      s: 'a {{ b }} {% c %}',
      n: 28080,
      f: 0.1,
      neg: -0,
      big: 1e21,
      t: true,
      no: false,
      nul: null,
      list: [1, 2],
      map: { k: 'v', deep: { n: 7 } },
      empty: '',
    };
    const texts = [
      '',
      'plain text only',
      '{{ vars.s }}|{{vars.n}}|{{ vars.f }}|{{ vars.neg }}|{{ vars.big }}|{{ vars.t }}|{{ vars.no }}|{{ vars.empty }}',
      '{{ vars.map.k }} {{ vars.map.deep.n }}',
      '{{\tvars.n\r\n}}',
      '{{ facts.hostname }} {{ facts.cpus }} {{ facts.os.platform }}',
      'a }} b %} c',
      '{{ vars.nul }}',
      '{{ vars.list }}',
      '{{ vars.map }}',
      '{{ vars.map.deep }}',
      '{{ vars.map.missing }}',
      '{{ vars.s.size }}',
      '{{ vars.list.first }}',
      '{{- vars.n -}}',
      '{{ vars.n | plus: 1 }}',
      '{{ "lit" }}',
      '{{ vars["n"] }}',
      '{{ vars.list[0] }}',
      '{% if vars.t %}x{% endif %}',
      '{{ vars.n',
      '{{ }}',
      '{{ vars }}',
      '{{ facts.interfaces }}',
      '{{ undeclared.x }}',
      '{{ vars.nope }}',
    ];
    let plain = 0;
    for (const text of texts) {
      const t = plainTemplate(text, vars);
      const ours = t === undefined ? undefined : renderPlain(t, facts, vars);
      if (ours === undefined) continue;
      plain++;
      assert.equal(ours, await engine.parseAndRender(text, { facts, vars, services: {} }), `${JSON.stringify(text)} rendered differently`);
    }
    // The plain ones above: every line up to the first null, and the raw closing delimiters.
    assert.equal(plain, 7);
    // Each refused one, through the resource, gets liquidjs's answer or error.
    const dir = await tempDir();
    for (const [i, text] of ['{{ vars.nul }}', '{{ vars.list }}', '{{ vars.map.deep }}'].entries()) {
      const out = join(dir, `x${i}`);
      await run(make({ path: out, template: text, vars }));
      assert.equal(await readFile(out, 'utf8'), await engine.parseAndRender(text, { facts, vars, services: {} }), text);
    }
    // A name the check refuses stays the check's error, with its position.
    assert.throws(() => make({ path: join(dir, 'y'), template: 'x\n  {{ vars.map.missing }}', vars }), /template line 2, col 6: \\?"vars\.map\.missing\\?" is not declared in vars; known: k, deep/);
  });

  test('making the engine leaves Intl alone; the date filter still formats in the host default locale', () => {
    // A process of its own: Intl's state and the engine are per process, and the locale comes from LANG.
    const script = `
      import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
      import { tmpdir } from 'node:os';
      import { join } from 'node:path';
      import { resourceId } from './src/graph/ids.ts';
      import { templateKind } from './src/resources/template.ts';
      import { testWorld } from './test/helpers/world.ts';
      let made = 0;
      const Real = Intl.DateTimeFormat;
      Intl.DateTimeFormat = new Proxy(Real, {
        apply: (t, self, args) => (made++, Reflect.apply(t, self, args)),
        construct: (t, args, nt) => (made++, Reflect.construct(t, args, nt)),
      });
      const dir = mkdtempSync(join(tmpdir(), 'bp-template-'));
      try {
        const d = '2020-03-05T14:00:00Z';
        const params = templateKind.schema.parse({ path: join(dir, 'out'), template: '{{ vars.d | date: "%A %b %c" }}', vars: { d } });
        const afterCompile = made;
        const world = testWorld({ stateRoot: dir });
        const res = templateKind.create(resourceId('template', 'x'), params, world);
        await res.checkApply({ apply: true, refresh: false, signal: new AbortController().signal, log: { change() {}, info() {}, warn() {}, debug() {} } });
        const date = new Date(d);
        const expected = [new Real(undefined, { weekday: 'long' }).format(date), new Real(undefined, { month: 'short' }).format(date), date.toLocaleString()].join(' ');
        console.log(JSON.stringify({ afterCompile, rendered: readFileSync(join(dir, 'out'), 'utf8'), expected }));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    `;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: ROOT,
      encoding: 'utf8',
      env: { ...process.env, LANG: 'de_DE.UTF-8', LC_ALL: 'de_DE.UTF-8' },
    });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '') as { afterCompile: number; rendered: string; expected: string };
    assert.equal(out.afterCompile, 0, 'compiling a template made an Intl.DateTimeFormat (liquidjs resolving the locale up front)');
    assert.equal(out.rendered, out.expected);
    assert.match(out.rendered, /^Donnerstag /, 'the date filter did not use the host locale (LANG=de_DE)');
  });
});
