import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BackplaneError, ValidationErrors } from '../../src/errors.js';
import { parseGraphText } from '../../src/frontends/load.js';
import { rawResource } from '../../src/frontends/raw-builders.js';
import { buildGraph } from '../../src/graph/build.js';
import { Graph } from '../../src/graph/graph.js';
import { defaultMeta } from '../../src/graph/meta.js';
import type { RawGraph } from '../../src/graph/raw.js';
import { createRegistry } from '../../src/resources/registry.js';
import { GRAPH_FILE, build, buildErrors, edgeTexts, id, onlyError, registry, where } from '../helpers/graph.js';

describe('buildGraph: valid graphs', () => {
  test('vertices are kind[name] with validated parameters, defaults applied and their source line', () => {
    const g = build(`resources:
  - kind: exec
    name: hello
    cmd: [echo, hi]
  - kind: print
    name: p
    msg: done
`);
    assert.deepEqual([...g.vertices.keys()], [id('exec', 'hello'), id('print', 'p')]);
    const exec = g.vertices.get(id('exec', 'hello'));
    assert.ok(exec !== undefined);
    assert.equal(exec.kind, 'exec');
    assert.equal(exec.name, 'hello');
    assert.deepEqual(exec.params, { cmd: ['echo', 'hi'], shell: false, env: {}, timeout: 0, refreshOnly: false });
    assert.deepEqual(exec.meta, defaultMeta);
    assert.deepEqual(exec.loc, { file: GRAPH_FILE, line: 2, col: 5 });
    assert.equal(g.vertices.get(id('print', 'p'))?.loc?.line, 5);
    assert.equal(g.source, GRAPH_FILE);
    assert.deepEqual(g.edges, []);
  });

  test('resources: [] is an empty graph; an empty file or a bare "resources:" is an error (a file cut short by a write)', () => {
    const g = build('resources: []\n');
    assert.equal(g.vertices.size, 0);
    assert.equal(g.edges.length, 0);
    for (const text of ['', '# nothing yet\n', '\n\n']) {
      const e = onlyError(text);
      assert.equal(e.format(), `${GRAPH_FILE}:1:1: the graph file is empty\n  hint: write "resources: []" for a graph that manages nothing; nothing was applied`);
    }
    assert.match(onlyError('resources:\n').format(), /^\/test\/graph\.yaml:1:1: "resources" is empty\n {2}hint: write "resources: \[\]"/);
  });

  test('the same name may be used by different kinds', () => {
    const g = build(`resources:
  - { kind: noop, name: x }
  - { kind: print, name: x, msg: m }
`);
    assert.deepEqual([...g.vertices.keys()], [id('noop', 'x'), id('print', 'x')]);
  });

  test('a numeric name is read as text', () => {
    const g = build('resources:\n  - { kind: noop, name: 42 }\n  - { kind: noop, name: b, require: "noop:42" }\n');
    assert.deepEqual(edgeTexts(g), ['noop[42] -> noop[b]']);
  });
});

describe('buildGraph: bad input is rejected with file:line:col and a hint', () => {
  test('malformed YAML is a syntax error at its line; nothing is built', () => {
    const text = `resources:
  - kind: noop
    name: a
    require: [noop:b
  - kind: noop
    name: b
`;
    assert.throws(
      () => parseGraphText(GRAPH_FILE, text),
      (err: unknown) => {
        assert.ok(err instanceof ValidationErrors);
        const e = err.errors[0];
        assert.ok(e !== undefined);
        assert.equal(e.code, 'E_YAML');
        assert.equal(e.where?.file, GRAPH_FILE);
        // The unclosed list opens on line 4; the parser finds out on line 5, where the next item starts.
        assert.deepEqual(e.where, { file: GRAPH_FILE, line: 5, col: 3 });
        assert.match(e.message, /^invalid YAML: /);
        assert.match(e.hint ?? '', /(fix the YAML syntax|check brackets and commas).*nothing was applied/);
        return true;
      },
    );
  });

  test('a bad indentation is reported at its exact line', () => {
    const e = onlyError(`resources:
  - kind: noop
    name: a
   bad: indentation
`);
    assert.equal(e.code, 'E_YAML');
    assert.equal(e.where?.line, 4);
  });

  test('a key given twice in one resource is a YAML error at the second one', () => {
    const e = onlyError(`resources:
  - kind: noop
    name: a
    name: b
`);
    assert.equal(e.code, 'E_YAML');
    assert.match(e.message, /unique/i);
    assert.equal(where(e), `${GRAPH_FILE}:4:5`);
  });

  test('unknown kind: the line of the resource, a suggestion and the list of kinds', () => {
    const e = onlyError(`resources:
  - kind: noop
    name: ok
  - kind: nop
    name: a
`);
    assert.equal(e.code, 'E_UNKNOWN_KIND');
    assert.equal(e.message, 'unknown resource kind "nop"');
    assert.equal(where(e), `${GRAPH_FILE}:4:5`);
    assert.match(e.hint ?? '', /did you mean "noop"\?/);
    assert.match(e.hint ?? '', /known kinds: .*exec.*noop.*print/);
  });

  test('unknown parameter: the line of the key, with "did you mean"', () => {
    const e = onlyError(`resources:
  - kind: print
    name: p
    msg: hello
    mesg: typo
`);
    assert.equal(e.code, 'E_SCHEMA');
    assert.equal(e.resource, 'print[p]');
    assert.equal(e.message, 'unknown parameter "mesg"');
    assert.equal(where(e), `${GRAPH_FILE}:5:5`);
    assert.equal(e.hint, 'did you mean "msg"?');
  });

  test('unknown parameter with nothing close: the hint lists the known ones', () => {
    const e = onlyError(`resources:
  - kind: noop
    name: a
    colour: red
`);
    assert.equal(e.message, 'unknown parameter "colour"');
    assert.equal(e.where?.line, 4);
    assert.match(e.hint ?? '', /known parameters/);
  });

  test('wrong type: the line of the parameter and what was expected', () => {
    const e = onlyError(`resources:
  - kind: print
    name: p
    msg: 3
`);
    assert.equal(e.code, 'E_SCHEMA');
    assert.equal(e.resource, 'print[p]');
    assert.match(e.message, /^parameter "msg": .*expected string/);
    assert.equal(where(e), `${GRAPH_FILE}:4:5`);
    assert.match(e.hint ?? '', /backplane schema/);
  });

  test('a wrong type deep inside a parameter points at the deepest key found', () => {
    const e = onlyError(`resources:
  - kind: exec
    name: e
    cmd: [sleep, "1"]
    watch:
      files: [relative/path]
`);
    assert.equal(e.code, 'E_SCHEMA');
    assert.match(e.message, /^parameter "watch\.files\.0": must be an absolute path/);
    assert.equal(where(e), `${GRAPH_FILE}:6:15`);
  });

  test('a missing required parameter points at the resource', () => {
    const e = onlyError(`resources:
  - kind: noop
    name: a
  - kind: timer
    name: t
`);
    assert.match(e.message, /^parameter "interval": /);
    assert.equal(e.resource, 'timer[t]');
    assert.equal(where(e), `${GRAPH_FILE}:4:5`);
  });

  test('a value the kind rejects (a command string without a shell) names the parameter', () => {
    const e = onlyError(`resources:
  - kind: exec
    name: e
    cmd: echo hi
`);
    assert.match(e.message, /^parameter "cmd": a command string needs shell: true/);
    assert.equal(e.where?.line, 4);
  });

  test('duplicate kind[name]: the second declaration, with the line of the first in the hint', () => {
    const e = onlyError(`resources:
  - kind: noop
    name: a
  - kind: noop
    name: b
  - kind: noop
    name: a
`);
    assert.equal(e.code, 'E_DUPLICATE');
    assert.equal(e.message, 'noop[a] is declared twice');
    assert.equal(where(e), `${GRAPH_FILE}:6:5`);
    assert.match(e.hint ?? '', new RegExp(`first declared at ${GRAPH_FILE}:2:5`));
  });

  test('an edge to a resource that does not exist: the line and column of the reference', () => {
    const e = onlyError(`resources:
  - kind: noop
    name: alpha
  - kind: noop
    name: b
    require: [noop:alpah]
`);
    assert.equal(e.code, 'E_MISSING_REF');
    assert.equal(e.message, 'edge refers to noop[alpah], which is not declared in this graph');
    assert.equal(where(e), `${GRAPH_FILE}:6:15`);
    assert.equal(e.hint, 'did you mean noop[alpha]?');
  });

  test('an edge to a resource of an unknown kind says how to fix it', () => {
    const errors = buildErrors(`resources:
  - kind: noop
    name: b
    before: "nothing[x]"
`);
    assert.equal(errors.length, 1);
    const e = errors[0];
    assert.ok(e !== undefined);
    assert.equal(e.code, 'E_MISSING_REF');
    assert.equal(e.where?.line, 4);
    assert.equal(e.hint, 'declare that resource or remove the edge');
  });

  test('a reference that is neither kind[name] nor kind:name', () => {
    const e = onlyError(`resources:
  - kind: noop
    name: a
    before: ["not a ref"]
`);
    assert.equal(e.code, 'E_BAD_REF');
    assert.equal(e.where?.line, 4);
    assert.match(e.hint ?? '', /kind\[name\] or kind:name/);
  });

  test('a relation entry that is not text', () => {
    const e = onlyError(`resources:
  - kind: noop
    name: a
    require:
      - { kind: noop, name: b }
  - kind: noop
    name: b
`);
    assert.equal(e.code, 'E_SCHEMA');
    assert.match(e.message, /"require" entries must be resource references/);
    assert.equal(e.where?.line, 5);
  });

  test('relative paths are rejected: exec cwd and creates, file path (also when it comes from the name)', () => {
    const errors = buildErrors(`resources:
  - kind: exec
    name: e
    cmd: [ls]
    cwd: some/dir
    creates: marker
  - kind: file
    name: f
    path: etc/motd
  - kind: file
    name: relative.txt
  - kind: file
    name: /srv/../etc/passwd
`);
    const summary = errors.map((e) => `${e.where?.line} ${e.resource} ${e.message}`);
    assert.deepEqual(summary, [
      '5 exec[e] parameter "cwd": must be an absolute path (start with /)',
      '6 exec[e] parameter "creates": must be an absolute path (start with /)',
      '9 file[f] parameter "path": must be an absolute path (start with /)',
      '10 file[relative.txt] parameter "path": must be an absolute path (start with /)',
      '12 file[/srv/../etc/passwd] parameter "path": must not contain ".." segments',
    ]);
    for (const e of errors) assert.ok(e.hint !== undefined && e.hint !== '', e.format());
  });

  test('every problem in a file is reported at once, in file order, each with its own line', () => {
    const text = `resources:
  - kind: nop
    name: a
  - kind: print
    name: p
    msg: 3
    mesg: x
  - kind: exec
    name: e
    cmd: [ls]
    cwd: rel/dir
  - kind: noop
    name: d
  - kind: noop
    name: d
  - kind: noop
    name: z
    require: [noop:missing]
    meta: { retry: -2, bogus: 1 }
`;
    const errors = buildErrors(text);
    assert.deepEqual(
      errors.map((e) => [e.code, e.where?.line]),
      [
        ['E_UNKNOWN_KIND', 2],
        ['E_SCHEMA', 6],
        ['E_SCHEMA', 7],
        ['E_SCHEMA', 11],
        ['E_DUPLICATE', 14],
        ['E_SCHEMA', 19],
        ['E_SCHEMA', 19],
        ['E_MISSING_REF', 18],
      ],
    );
    for (const e of errors) {
      assert.equal(e.where?.file, GRAPH_FILE);
      assert.ok(e.hint !== undefined && e.hint.length > 0, `no hint: ${e.format()}`);
    }
    // The thrown error says how many and prints each one file:line:col first.
    try {
      build(text);
      assert.fail('expected an error');
    } catch (err) {
      assert.ok(err instanceof ValidationErrors);
      assert.match(err.message, /^8 errors in graph:/);
      const lines = err.format().split('\n').filter((l) => !l.startsWith('  hint: '));
      assert.equal(lines.length, 8);
      for (const l of lines) assert.match(l, new RegExp(`^${GRAPH_FILE}:\\d+:\\d+: `));
    }
  });

  test('a cycle is reported together with the other errors of the file', () => {
    const errors = buildErrors(`resources:
  - kind: noop
    name: a
    require: [noop:b]
  - kind: noop
    name: b
    require: [noop:a]
  - kind: print
    name: p
`);
    assert.deepEqual(
      errors.map((e) => e.code),
      ['E_SCHEMA', 'E_CYCLE'],
    );
    assert.equal(errors[1]?.message, 'dependency cycle: noop[a] -> noop[b] -> noop[a]');
  });

  test('edges to a resource whose parameters are wrong do not add a second, misleading error', () => {
    const e = onlyError(`resources:
  - kind: print
    name: p
    msg: 3
  - kind: noop
    name: a
    require: ["print[p]"]
`);
    assert.equal(e.code, 'E_SCHEMA');
    assert.equal(e.resource, 'print[p]');
  });

  test('edges to a resource of a misspelt kind do not claim it was never declared', () => {
    const e = onlyError(`resources:
  - { kind: exce, name: a, cmd: [ls] }
  - { kind: noop, name: b, require: ["exce:a"] }
`);
    assert.equal(e.code, 'E_UNKNOWN_KIND');
    assert.equal(e.where?.line, 2);
  });

  test('errors the frontend found come first and are kept', () => {
    const raw: RawGraph = {
      source: 'mem',
      resources: [],
      edges: [],
      errors: [new BackplaneError('E_SCHEMA', 'from the frontend', { where: { file: 'mem', line: 1, col: 1 } })],
    };
    assert.throws(
      () => buildGraph(raw, registry),
      (err: unknown) => err instanceof ValidationErrors && err.errors.length === 1 && err.errors[0]?.message === 'from the frontend',
    );
  });

  test('a kind the registry does not know is rejected even when another agent has it', () => {
    const small = createRegistry([]);
    assert.throws(
      () => buildGraph(parseGraphText(GRAPH_FILE, 'resources:\n  - { kind: noop, name: a }\n'), small),
      (err: unknown) => err instanceof ValidationErrors && err.errors[0]?.code === 'E_UNKNOWN_KIND' && /known kinds: $/.test(err.errors[0].hint ?? ''),
    );
  });
});

describe('buildGraph: relations', () => {
  const pair = (rel: string, ref: string): string => `resources:
  - kind: noop
    name: a
  - kind: noop
    name: b
    ${rel}: ${ref}
`;

  test('require: the other runs first', () => {
    assert.deepEqual(edgeTexts(build(pair('require', '[noop:a]'))), ['noop[a] -> noop[b]']);
  });

  test('before: this runs first', () => {
    assert.deepEqual(edgeTexts(build(pair('before', '[noop:a]'))), ['noop[b] -> noop[a]']);
  });

  test('notify: this runs first and refreshes the other', () => {
    assert.deepEqual(edgeTexts(build(pair('notify', '[noop:a]'))), ['noop[b] -> noop[a] notify']);
  });

  test('subscribe: the other runs first and refreshes this', () => {
    assert.deepEqual(edgeTexts(build(pair('subscribe', '[noop:a]'))), ['noop[a] -> noop[b] notify']);
  });

  test('kind[name] and kind:name, as a scalar, a quoted flow list or a block list, all mean the same', () => {
    const forms = ['noop:a', '"noop[a]"', "'noop[a]'", '["noop[a]"]', '[noop:a]', "['noop:a']", '\n      - noop[a]', '\n      - "noop:a"'];
    for (const form of forms) {
      assert.deepEqual(edgeTexts(build(pair('require', form))), ['noop[a] -> noop[b]'], form);
    }
  });

  test('names containing ":", "/" or brackets survive both reference forms', () => {
    const g = build(`resources:
  - kind: noop
    name: "host:8080"
  - kind: noop
    name: /etc/motd
  - kind: noop
    name: "x[1]"
  - kind: noop
    name: last
    require: ["noop[host:8080]", "noop:/etc/motd", "noop:x[1]"]
`);
    assert.deepEqual(edgeTexts(g), ['noop[/etc/motd] -> noop[last]', 'noop[host:8080] -> noop[last]', 'noop[x[1]] -> noop[last]']);
  });

  test('one relation may list several resources', () => {
    const g = build(`resources:
  - { kind: noop, name: a }
  - { kind: noop, name: b }
  - { kind: noop, name: c, require: [noop:a, "noop[b]"], notify: [] }
`);
    assert.deepEqual(edgeTexts(g), ['noop[a] -> noop[c]', 'noop[b] -> noop[c]']);
  });

  test('the same edge declared from both ends is one edge', () => {
    const g = build(`resources:
  - kind: noop
    name: a
    before: [noop:b]
  - kind: noop
    name: b
    require: [noop:a, "noop[a]"]
`);
    assert.deepEqual(edgeTexts(g), ['noop[a] -> noop[b]']);
  });

  test('merged edges keep notify when any of them notifies', () => {
    const g = build(`resources:
  - kind: noop
    name: a
    before: [noop:b]
  - kind: noop
    name: b
    subscribe: [noop:a]
    require: [noop:a]
`);
    assert.deepEqual(edgeTexts(g), ['noop[a] -> noop[b] notify']);
  });
});

describe('buildGraph: auto-edges', () => {
  test('a file depends on the file resources of its parent directories', () => {
    const g = build(`resources:
  - kind: file
    name: /etc/app/conf.d/site.conf
    content: "x\\n"
  - kind: file
    name: /etc/app
    type: directory
  - kind: file
    name: /etc/app/conf.d
    type: directory
  - kind: file
    name: /etc/unrelated
`);
    assert.deepEqual(edgeTexts(g), [
      'file[/etc/app/conf.d] -> file[/etc/app/conf.d/site.conf] auto',
      'file[/etc/app] -> file[/etc/app/conf.d/site.conf] auto',
      'file[/etc/app] -> file[/etc/app/conf.d] auto',
    ]);
    const order = g.topoOrder();
    assert.ok(order.indexOf(id('file', '/etc/app')) < order.indexOf(id('file', '/etc/app/conf.d')));
    assert.ok(order.indexOf(id('file', '/etc/app/conf.d')) < order.indexOf(id('file', '/etc/app/conf.d/site.conf')));
  });

  test('the parent is matched by path, not by resource name', () => {
    const g = build(`resources:
  - kind: file
    name: config
    path: /srv/www/index.html
  - kind: file
    name: webroot
    path: /srv/www/
    type: directory
`);
    assert.deepEqual(edgeTexts(g), ['file[webroot] -> file[config] auto']);
  });

  test('no edge when the parent directory is not managed', () => {
    const g = build(`resources:
  - { kind: file, name: /tmp/a/b }
  - { kind: file, name: /tmp/c }
`);
    assert.deepEqual(g.edges, []);
  });

  test('meta autoedge: false turns a resource\'s automatic dependencies off', () => {
    const g = build(`resources:
  - kind: file
    name: /etc/app
    type: directory
  - kind: file
    name: /etc/app/a
  - kind: file
    name: /etc/app/b
    meta: { autoedge: false }
`);
    assert.deepEqual(edgeTexts(g), ['file[/etc/app] -> file[/etc/app/a] auto']);
  });

  test('a file copied from another managed file depends on it', () => {
    const g = build(`resources:
  - { kind: file, name: /tmp/src.txt, content: "x" }
  - { kind: file, name: /var/copy.txt, source: /tmp/src.txt }
`);
    assert.deepEqual(edgeTexts(g), ['file[/tmp/src.txt] -> file[/var/copy.txt] auto']);
  });

  test('an automatic edge also declared by the user is one user edge', () => {
    const g = build(`resources:
  - kind: file
    name: /etc/app
    type: directory
  - kind: file
    name: /etc/app/a
    require: ["file[/etc/app]"]
`);
    assert.deepEqual(edgeTexts(g), ['file[/etc/app] -> file[/etc/app/a]']);
  });

  test('an automatic edge that would close a cycle is dropped; the declared order wins', () => {
    const g = build(`resources:
  - kind: file
    name: /etc/app
    type: directory
    require: ["file:/etc/app/a"]
  - kind: file
    name: /etc/app/a
`);
    assert.deepEqual(edgeTexts(g), ['file[/etc/app/a] -> file[/etc/app]']);
    // Dropping it changes the order things run in, so it is said, at the resource that lost the edge.
    assert.deepEqual(
      g.warnings.map((w) => [w.code, w.format()]),
      [
        [
          'W_AUTOEDGE_DROPPED',
          `${GRAPH_FILE}:6:5: file[/etc/app/a]: automatic edge file[/etc/app] -> file[/etc/app/a] left out: it would close the cycle file[/etc/app] -> file[/etc/app/a] -> file[/etc/app]\n` +
            '  hint: file[/etc/app/a] is no longer ordered after file[/etc/app]; if it must be, remove the declared edge that closes the cycle, or set meta: { autoedge: false } on file[/etc/app/a] to silence this',
        ],
      ],
    );
  });

  test('a graph whose auto-edges all fit has no warnings', () => {
    const g = build(`resources:
  - { kind: file, name: /etc/app, type: directory }
  - { kind: file, name: /etc/app/a }
`);
    assert.deepEqual(g.warnings, []);
  });

  test('kinds without auto-edges get none', () => {
    const g = build(`resources:
  - { kind: exec, name: /etc, cmd: [ls] }
  - { kind: exec, name: /etc/x, cmd: [ls] }
`);
    assert.deepEqual(g.edges, []);
  });
});

describe('buildGraph: metaparams', () => {
  const withMeta = (meta: string): string => `resources:
  - kind: noop
    name: a
    meta: ${meta}
`;
  const metaOf = (meta: string) => {
    const v = build(withMeta(meta)).vertices.get(id('noop', 'a'));
    assert.ok(v !== undefined);
    return v.meta;
  };

  test('defaults when meta is absent or empty', () => {
    const expected = { retry: 0, delay: 0, poll: 0, sema: [], noop: false, autoedge: true };
    assert.deepEqual(defaultMeta, expected);
    assert.deepEqual(build('resources:\n  - { kind: noop, name: a }\n').vertices.get(id('noop', 'a'))?.meta, expected);
    assert.deepEqual(metaOf('{}'), expected);
    assert.deepEqual(metaOf('{ retry: 3 }'), { ...expected, retry: 3 });
  });

  test('retry -1 means forever and is allowed; below -1 or a fraction is not', () => {
    assert.equal(metaOf('{ retry: -1 }').retry, -1);
    const below = onlyError(withMeta('{ retry: -2 }'));
    assert.equal(below.code, 'E_SCHEMA');
    assert.match(below.message, /^meta "retry": /);
    assert.equal(below.resource, 'noop[a]');
    assert.equal(where(below), `${GRAPH_FILE}:4:13`);
    assert.match(onlyError(withMeta('{ retry: 1.5 }')).message, /^meta "retry": /);
  });

  test('durations: seconds as a number, or a string with a unit, in milliseconds', () => {
    assert.equal(metaOf('{ delay: "250ms" }').delay, 250);
    assert.equal(metaOf('{ delay: 2 }').delay, 2000);
    assert.equal(metaOf('{ delay: 0.5 }').delay, 500);
    assert.equal(metaOf('{ delay: "1m" }').delay, 60_000);
    assert.equal(metaOf('{ delay: 1.5s }').delay, 1500);
    assert.equal(metaOf('{ delay: "2" }').delay, 2000);
    assert.equal(metaOf('{ poll: 1h }').poll, 3_600_000);
  });

  test('a bad duration says how to write one', () => {
    const e = onlyError(withMeta('{ delay: soon }'));
    assert.equal(e.message, 'meta "delay": "soon" is not a duration; write seconds (5) or a value with a unit (250ms, 2s, 1m)');
    assert.equal(e.where?.line, 4);
    assert.match(onlyError(withMeta('{ poll: -1 }')).message, /^meta "poll": /);
    assert.match(onlyError(withMeta('{ delay: 5d }')).message, /^meta "delay": /);
  });

  test('semaphores are "name" or "name:count"', () => {
    assert.deepEqual(metaOf('{ sema: ["apt:2", lock, "db:1"] }').sema, ['apt:2', 'lock', 'db:1']);
    const e = onlyError(withMeta('{ sema: [ok, "x:y"] }'));
    assert.equal(e.message, 'meta "sema.1": must be "name" or "name:count"');
    assert.equal(where(e), `${GRAPH_FILE}:4:24`);
    assert.match(onlyError(withMeta('{ sema: "apt:1" }')).message, /^meta "sema": /);
  });

  test('noop and autoedge are booleans', () => {
    assert.equal(metaOf('{ noop: true }').noop, true);
    assert.equal(metaOf('{ autoedge: false }').autoedge, false);
    assert.match(onlyError(withMeta('{ noop: "yes" }')).message, /^meta "noop": .*boolean/);
  });

  test('an unknown metaparam is an error with a suggestion', () => {
    const e = onlyError(`resources:
  - kind: noop
    name: a
    meta:
      retry: 1
      retrys: 3
`);
    assert.equal(e.message, 'unknown meta "retrys"');
    assert.equal(where(e), `${GRAPH_FILE}:6:7`);
    assert.equal(e.hint, 'did you mean "retry"?');
  });

  test('meta that is not a map is rejected', () => {
    const e = onlyError(withMeta('fast'));
    assert.equal(e.code, 'E_SCHEMA');
    assert.equal(e.resource, 'noop[a]');
  });
});

describe('buildGraph: fingerprints', () => {
  const fp = (text: string, kind: string, name: string): string => {
    const v = build(text).vertices.get(id(kind, name));
    assert.ok(v !== undefined);
    assert.ok(v.fingerprint.length > 0);
    return v.fingerprint;
  };

  test('the same definition has the same fingerprint, whatever the key order', () => {
    const a = fp(
      `resources:
  - kind: exec
    name: e
    cmd: [sleep, "1"]
    env: { A: "1", B: "2" }
    timeout: 5
    meta: { retry: 2, delay: 1s }
`,
      'exec',
      'e',
    );
    const b = fp(
      `resources:
  - meta: { delay: 1000ms, retry: 2 }
    timeout: 5s
    env: { B: "2", A: "1" }
    name: e
    cmd: [sleep, "1"]
    kind: exec
`,
      'exec',
      'e',
    );
    assert.equal(a, b);
  });

  test('defaults written out or left implicit give the same fingerprint', () => {
    const implicit = fp('resources:\n  - { kind: exec, name: e, cmd: [ls] }\n', 'exec', 'e');
    const explicit = fp('resources:\n  - { kind: exec, name: e, cmd: [ls], shell: false, env: {}, meta: { retry: 0, sema: [] } }\n', 'exec', 'e');
    assert.equal(implicit, explicit);
  });

  test('a changed parameter or metaparam changes the fingerprint; relations do not', () => {
    const base = 'resources:\n  - { kind: exec, name: e, cmd: [ls, /tmp] }\n  - { kind: noop, name: n }\n';
    const f0 = fp(base, 'exec', 'e');
    assert.notEqual(fp(base.replace('/tmp', '/var'), 'exec', 'e'), f0);
    assert.notEqual(fp(base.replace('cmd: [ls, /tmp]', 'cmd: [ls, /tmp], timeout: 3'), 'exec', 'e'), f0);
    assert.notEqual(fp(base.replace('cmd: [ls, /tmp]', 'cmd: [ls, /tmp], meta: { retry: 1 }'), 'exec', 'e'), f0);
    assert.notEqual(fp(base.replace('cmd: [ls, /tmp]', 'cmd: [/tmp, ls]'), 'exec', 'e'), f0);
    assert.equal(fp(base.replace('cmd: [ls, /tmp]', 'cmd: [ls, /tmp], require: [noop:n]'), 'exec', 'e'), f0);
  });

  test('two kinds with equal parameters do not share a fingerprint', () => {
    const text = 'resources:\n  - { kind: noop, name: x }\n  - { kind: noop, name: y }\n';
    assert.equal(fp(text, 'noop', 'x'), fp(text, 'noop', 'y'));
    const g = build('resources:\n  - { kind: print, name: x, msg: m }\n  - { kind: noop, name: x }\n');
    assert.notEqual(g.vertices.get(id('print', 'x'))?.fingerprint, g.vertices.get(id('noop', 'x'))?.fingerprint);
  });
});

describe('auto-edges give way', () => {
  test('an auto-edge that would close a cycle with declared edges is dropped, not an error', () => {
    // The directory is declared to come after a file inside it: the parent-directory auto-edge would close a cycle.
    const g = build(`resources:
  - { kind: file, name: /srv/a, type: directory, require: "file[/srv/a/x]" }
  - { kind: file, name: /srv/a/x, content: "x" }
`);
    assert.deepEqual(edgeTexts(g), ['file[/srv/a/x] -> file[/srv/a]']);
  });

  test('a cycle of declared edges is still an error even when auto-edges are involved elsewhere', () => {
    const errors = buildErrors(`resources:
  - { kind: file, name: /srv/a, type: directory }
  - { kind: file, name: /srv/a/x, content: "x", before: "noop[n]" }
  - { kind: noop, name: n, before: "file[/srv/a/x]" }
`);
    assert.equal(errors.length, 1);
    assert.match(errors[0]?.message ?? '', /dependency cycle: .*noop\[n\].*file\[\/srv\/a\/x\]|dependency cycle: .*file\[\/srv\/a\/x\].*noop\[n\]/);
  });

  test('every provider of a wanted key becomes a dependency', () => {
    // Two removed users both free group g (it was their primary group): the group's removal waits for both.
    const g = build(`resources:
  - { kind: user, name: a, state: absent, group: g }
  - { kind: user, name: b, state: absent, group: g }
  - { kind: group, name: g, state: absent }
`);
    const texts = edgeTexts(g);
    assert.ok(texts.includes('user[a] -> group[g] auto'), texts.join('\n'));
    assert.ok(texts.includes('user[b] -> group[g] auto'), texts.join('\n'));
  });
});

describe('two resources managing one thing', () => {
  test('two files on one path under different names are refused, with both locations', () => {
    const errors = buildErrors(`resources:
  - { kind: file, name: a, path: /srv/x, content: "a" }
  - { kind: noop, name: between }
  - { kind: file, name: /srv//x/, content: "b" }
`);
    assert.deepEqual(
      errors.map((e) => [e.code, e.format()]),
      [
        [
          'E_OVERLAP',
          `${GRAPH_FILE}:4:5: file[/srv//x/]: file[/srv//x/] manages path /srv/x, which file[a] (${GRAPH_FILE}:2:5) already manages\n` +
            "  hint: the two would undo each other's changes forever; keep one resource for path /srv/x and remove or rename the other",
        ],
      ],
    );
  });

  test('a template and a file on one path overlap too', () => {
    const e = onlyError(`resources:
  - { kind: file, name: /srv/conf, content: "a" }
  - { kind: template, name: conf, path: /srv/conf, template: "b" }
`);
    assert.equal(e.code, 'E_OVERLAP');
    assert.equal(e.message, `template[conf] manages path /srv/conf, which file[/srv/conf] (${GRAPH_FILE}:2:5) already manages`);
  });

  test('two packages, users or groups of one name overlap (names set apart from the resource name, as a module can)', () => {
    const at = () => ({ file: GRAPH_FILE, line: 0, col: 0 });
    const res = (kind: string, name: string, params: Record<string, unknown>) => rawResource({ kind, name, params, meta: undefined }, at, []);
    const raw: RawGraph = {
      source: GRAPH_FILE,
      errors: [],
      edges: [],
      resources: [
        res('pkg', 'curl', {}),
        res('pkg', 'the-curl', { name: 'curl' }),
        res('user', 'alice', {}),
        res('user', 'admin', { name: 'alice' }),
        res('group', 'web', {}),
        res('group', 'www', { name: 'web' }),
      ],
    };
    const errors = (() => {
      try {
        buildGraph(raw, registry);
      } catch (err) {
        if (err instanceof ValidationErrors) return err.errors.map((x) => x.message);
        throw err;
      }
      return [];
    })();
    assert.deepEqual(errors, [
      `pkg[the-curl] manages package curl, which pkg[curl] (${GRAPH_FILE}) already manages`,
      `user[admin] manages user alice, which user[alice] (${GRAPH_FILE}) already manages`,
      `group[www] manages group web, which group[web] (${GRAPH_FILE}) already manages`,
    ]);
  });

  test('different paths, and a directory with files inside it, do not overlap', () => {
    const g = build(`resources:
  - { kind: file, name: /srv/d, type: directory, purge: true }
  - { kind: file, name: /srv/d/a, content: "a" }
  - { kind: template, name: /srv/d/b, template: "b" }
  - { kind: user, name: web }
  - { kind: group, name: web }
`);
    assert.equal(g.vertices.size, 5);
  });
});

/** An edge as `from -> to`, with its flags: in the graph's own order, unlike edgeTexts. */
const edgeLine = (e: { from: string; to: string; notify: boolean; auto: boolean }): string => `${e.from} -> ${e.to}${e.notify ? ' notify' : ''}${e.auto ? ' auto' : ''}`;

describe('buildGraph: one pass, the same reports in the same order', () => {
  test('duplicates, unknown kinds, bad parameters, overlaps, bad and missing references and cycles, in that order, each at its line', () => {
    const errors = buildErrors(`resources:
  - kind: file
    name: /srv/a
    require: [noop:x]
  - kind: file
    name: other
    path: /srv/a
  - kind: noop
    name: x
    require: ["noop[x]"]
  - kind: nop
    name: n
  - kind: file
    name: /srv/a
  - kind: file
    name: /srv/d
    type: directory
    require: ["file:/srv/d/f"]
  - kind: file
    name: /srv/d/f
    before: [noop:y]
  - kind: noop
    name: y
    before: [noop:z, "bad ref", noop:gone]
  - kind: noop
    name: z
    before: [noop:y]
  - kind: file
    name: third
    path: /srv/a/
  - kind: print
    name: p
`);
    assert.deepEqual(
      errors.map((e) => [e.code, e.where?.line, e.message]),
      [
        ['E_UNKNOWN_KIND', 11, 'unknown resource kind "nop"'],
        ['E_DUPLICATE', 13, 'file[/srv/a] is declared twice'],
        ['E_SCHEMA', 31, 'parameter "msg": Invalid input: expected string, received undefined'],
        ['E_OVERLAP', 5, `file[other] manages path /srv/a, which file[/srv/a] (${GRAPH_FILE}:2:5) already manages`],
        ['E_OVERLAP', 28, `file[third] manages path /srv/a, which file[/srv/a] (${GRAPH_FILE}:2:5) already manages`],
        ['E_BAD_REF', 24, '"bad ref" is not a resource reference'],
        ['E_MISSING_REF', 24, 'edge refers to noop[gone], which is not declared in this graph'],
        // The auto-edge file[/srv/d] -> file[/srv/d/f] gives way (no error); the declared cycles remain, in vertex order.
        ['E_CYCLE', 8, 'dependency cycle: noop[x] -> noop[x]'],
        ['E_CYCLE', 22, 'dependency cycle: noop[y] -> noop[z] -> noop[y]'],
      ],
    );
  });

  test('edges keep the order they were first declared in, automatic ones after, merged ones at their first place', () => {
    const g = build(`resources:
  - kind: file
    name: /srv
    type: directory
  - kind: file
    name: /srv/b
    require: [noop:n]
  - kind: file
    name: /srv/a
    require: ["file:/srv"]
  - kind: noop
    name: n
    before: ["file:/srv/a"]
    notify: ["file:/srv/b"]
`);
    assert.deepEqual(g.edges.map(edgeLine), [
      'noop[n] -> file[/srv/b] notify',
      'file[/srv] -> file[/srv/a]',
      'noop[n] -> file[/srv/a]',
      'file[/srv] -> file[/srv/b] auto',
    ]);
    // Each vertex's lists are its edges in that same order, and the same arrays every time they are asked for.
    const lists = (name: string): [string[], string[]] => {
      const v = id(name.startsWith('/') ? 'file' : 'noop', name);
      return [g.dependencies(v).map(edgeLine), g.dependents(v).map(edgeLine)];
    };
    assert.deepEqual(lists('/srv'), [[], ['file[/srv] -> file[/srv/a]', 'file[/srv] -> file[/srv/b] auto']]);
    assert.deepEqual(lists('/srv/b'), [['noop[n] -> file[/srv/b] notify', 'file[/srv] -> file[/srv/b] auto'], []]);
    assert.deepEqual(lists('/srv/a'), [['file[/srv] -> file[/srv/a]', 'noop[n] -> file[/srv/a]'], []]);
    assert.deepEqual(lists('n'), [[], ['noop[n] -> file[/srv/b] notify', 'noop[n] -> file[/srv/a]']]);
    assert.equal(g.dependents(id('file', '/srv')), g.dependents(id('file', '/srv')));
    assert.equal(g.dependencies(id('file', '/srv/b')), g.dependencies(id('file', '/srv/b')));
    assert.deepEqual(g.dependents(id('noop', 'absent')), []);
    // The lists are exactly those a graph made from the plain edge list has.
    const plain = new Graph(new Map(g.vertices), [...g.edges], 'plain');
    for (const v of g.vertices.keys()) {
      assert.deepEqual(g.dependencies(v), plain.dependencies(v), v);
      assert.deepEqual(g.dependents(v), plain.dependents(v), v);
    }
    assert.deepEqual(g.topoOrder(), plain.topoOrder());
  });

  test('automatic edges: wanting resources in declaration order, each one\'s keys in its order (nearest directory first), providers in declaration order', () => {
    const g = build(`resources:
  - { kind: file, name: /a/b/c/f }
  - { kind: file, name: /a, type: directory }
  - { kind: file, name: /a/b/c, type: directory }
  - { kind: file, name: /a/b, type: directory }
  - { kind: file, name: /a/b/c/g, meta: { autoedge: false } }
  - { kind: file, name: /a/b/c/h }
`);
    assert.deepEqual(g.edges.map(edgeLine), [
      'file[/a/b/c] -> file[/a/b/c/f] auto',
      'file[/a/b] -> file[/a/b/c/f] auto',
      'file[/a] -> file[/a/b/c/f] auto',
      'file[/a/b] -> file[/a/b/c] auto',
      'file[/a] -> file[/a/b/c] auto',
      'file[/a] -> file[/a/b] auto',
      'file[/a/b/c] -> file[/a/b/c/h] auto',
      'file[/a/b] -> file[/a/b/c/h] auto',
      'file[/a] -> file[/a/b/c/h] auto',
    ]);
    assert.deepEqual(g.dependents(id('file', '/a')).map((e) => e.to), [id('file', '/a/b/c/f'), id('file', '/a/b/c'), id('file', '/a/b'), id('file', '/a/b/c/h')]);
  });

  test('the vertices are a map in declaration order: keys, values, entries, get, has, forEach', () => {
    const g = build(`resources:
  - { kind: noop, name: c }
  - { kind: noop, name: a }
  - { kind: file, name: /x, type: directory }
`);
    const ids = [id('noop', 'c'), id('noop', 'a'), id('file', '/x')];
    assert.equal(g.vertices.size, 3);
    assert.deepEqual([...g.vertices.keys()], ids);
    assert.deepEqual([...g.vertices.values()].map((v) => v.id), ids);
    assert.deepEqual([...g.vertices.entries()].map(([k, v]) => [k, v.id]), ids.map((i) => [i, i]));
    assert.deepEqual([...g.vertices].map(([k]) => k), ids);
    const seen: string[] = [];
    g.vertices.forEach((v, k, m) => {
      assert.equal(v.id, k);
      assert.equal(m, g.vertices);
      seen.push(k);
    });
    assert.deepEqual(seen, ids);
    assert.equal(g.vertices.get(id('noop', 'a'))?.name, 'a');
    assert.equal(g.vertices.get(id('file', '/x'))?.kind, 'file');
    assert.equal(g.vertices.get(id('noop', 'b')), undefined);
    assert.equal(g.vertices.has(id('noop', 'c')), true);
    assert.equal(g.vertices.has(id('noop', 'b')), false);
  });

  test('auto-edges that would close cycles are each dropped, with a warning each, in the order found', () => {
    const g = build(`resources:
  - kind: file
    name: /a
    type: directory
    require: ["file:/a/x"]
  - kind: file
    name: /a/x
  - kind: file
    name: /b
    type: directory
    require: ["file:/b/y/z"]
  - kind: file
    name: /b/y
    type: directory
  - kind: file
    name: /b/y/z
`);
    assert.deepEqual(
      g.warnings.map((w) => [w.code, w.where?.line, w.message]),
      [
        ['W_AUTOEDGE_DROPPED', 6, 'automatic edge file[/a] -> file[/a/x] left out: it would close the cycle file[/a] -> file[/a/x] -> file[/a]'],
        ['W_AUTOEDGE_DROPPED', 15, 'automatic edge file[/b] -> file[/b/y/z] left out: it would close the cycle file[/b] -> file[/b/y/z] -> file[/b]'],
        ['W_AUTOEDGE_DROPPED', 12, 'automatic edge file[/b] -> file[/b/y] left out: it would close the cycle file[/b] -> file[/b/y] -> file[/b/y/z] -> file[/b]'],
      ],
    );
    assert.deepEqual(g.edges.map(edgeLine), ['file[/a/x] -> file[/a]', 'file[/b/y/z] -> file[/b]', 'file[/b/y] -> file[/b/y/z] auto']);
    assert.deepEqual(g.dependents(id('file', '/b')), []);
  });

  test('every duplicate names the first declaration, whatever came between', () => {
    const errors = buildErrors(`resources:
  - { kind: noop, name: a }
  - { kind: nop, name: z }
  - { kind: noop, name: a }
  - { kind: nop, name: z }
  - { kind: noop, name: b, require: ["nop:z"] }
  - { kind: noop, name: e, export: true }
  - { kind: noop, name: e, export: true }
  - { kind: noop, name: e }
  - { kind: noop, name: a }
  - { kind: noop, name: b }
  - { kind: noop, name: e }
`);
    assert.deepEqual(
      errors.map((e) => [e.code, e.where?.line, e.message, e.hint?.replace(/known kinds: .*/, 'known kinds: ...')]),
      [
        ['E_UNKNOWN_KIND', 3, 'unknown resource kind "nop"', 'did you mean "noop"? known kinds: ...'],
        ['E_DUPLICATE', 4, 'noop[a] is declared twice', `it was first declared at ${GRAPH_FILE}:2:5; give each resource of a kind a unique name`],
        ['E_UNKNOWN_KIND', 5, 'unknown resource kind "nop"', 'did you mean "noop"? known kinds: ...'],
        ['E_DUPLICATE', 8, 'noop[e] is exported twice', 'give each exported resource of a kind a unique name'],
        ['E_DUPLICATE', 10, 'noop[a] is declared twice', `it was first declared at ${GRAPH_FILE}:2:5; give each resource of a kind a unique name`],
        ['E_DUPLICATE', 11, 'noop[b] is declared twice', `it was first declared at ${GRAPH_FILE}:6:5; give each resource of a kind a unique name`],
        ['E_DUPLICATE', 12, 'noop[e] is declared twice', `it was first declared at ${GRAPH_FILE}:9:5; give each resource of a kind a unique name`],
      ],
    );
  });

  test('a duplicate leaves the first declaration in place: edges still reach it', () => {
    const errors = buildErrors(`resources:
  - { kind: noop, name: a, require: ["noop:b"] }
  - { kind: noop, name: a }
  - { kind: noop, name: c }
  - { kind: noop, name: b, require: ["noop:a"] }
`);
    assert.deepEqual(
      errors.map((e) => [e.code, e.where?.line, e.message]),
      [
        ['E_DUPLICATE', 3, 'noop[a] is declared twice'],
        ['E_CYCLE', 2, 'dependency cycle: noop[a] -> noop[b] -> noop[a]'],
      ],
    );
  });

  test('a resource exported and then managed here under the same id is the local one, in its own place', () => {
    const g = build(`resources:
  - { kind: noop, name: a }
  - { kind: noop, name: e, export: true }
  - { kind: noop, name: b }
  - { kind: noop, name: e }
`);
    assert.deepEqual([...g.vertices.keys()], [id('noop', 'a'), id('noop', 'b'), id('noop', 'e')]);
    assert.deepEqual(g.exports.map((x) => x.name), ['e']);
  });
});
