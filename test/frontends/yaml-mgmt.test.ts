import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isMgmtGraph, readMgmtGraph } from '../../src/frontends/yaml-mgmt.js';
import { parseYamlDocument } from '../../src/frontends/document.js';
import type { Graph, Vertex } from '../../src/graph/graph.js';
import { defaultMeta } from '../../src/graph/meta.js';
import { GRAPH_FILE, build, buildErrors, edgeTexts, id, onlyError, where } from '../helpers/graph.js';

/**
 * mgmt's first example graph (the announcement, January 2016), verbatim: four execs written out with every field
 * at mgmt's zero value, exec1 -> exec2 -> exec3, and exec4 on its own. mgmt then called the resource map `types`
 * and an edge end's kind `type`; later versions renamed them `res` and then `resources`/`kind`.
 */
const MGMT_EXEC_2016 = `---
graph: mygraph
types:
  exec:
  - name: exec1
    cmd: sleep 10s
    shell: ''
    timeout: 0
    watchcmd: ''
    watchshell: ''
    ifcmd: ''
    ifshell: ''
    pollint: 0
    state: present
  - name: exec2
    cmd: sleep 10s
    shell: ''
    timeout: 0
    watchcmd: ''
    watchshell: ''
    ifcmd: ''
    ifshell: ''
    pollint: 0
    state: present
  - name: exec3
    cmd: sleep 10s
    shell: ''
    timeout: 0
    watchcmd: ''
    watchshell: ''
    ifcmd: ''
    ifshell: ''
    pollint: 0
    state: present
  - name: exec4
    cmd: sleep 10s
    shell: ''
    timeout: 0
    watchcmd: ''
    watchshell: ''
    ifcmd: ''
    ifshell: ''
    pollint: 0
    state: present
edges:
- name: e1
  from:
    type: exec
    name: exec1
  to:
    type: exec
    name: exec2
- name: e2
  from:
    type: exec
    name: exec2
  to:
    type: exec
    name: exec3
`;

/** The same graph as later mgmt versions wrote it. */
const MGMT_EXEC_RES = MGMT_EXEC_2016.replace('types:', 'resources:').replaceAll('type: exec', 'res: exec');
const MGMT_EXEC = MGMT_EXEC_2016.replace('types:', 'resources:').replaceAll('type: exec', 'kind: exec');

/** mgmt's file example, verbatim: three files that must exist, one that must not, a noop, and two edges. */
const MGMT_FILES_2016 = `---
graph: mygraph
types:
  noop:
  - name: noop1
  file:
  - name: file1
    path: /tmp/mgmt/f1
    content: |
      i am f1
    state: exists
  - name: file2
    path: /tmp/mgmt/f2
    content: |
      i am f2
    state: exists
  - name: file3
    path: /tmp/mgmt/f3
    content: |
      i am f3
    state: exists
  - name: file4
    path: /tmp/mgmt/f4
    content: |
      i am f4 and i should not be here
    state: absent
edges:
- name: e1
  from:
    type: file
    name: file1
  to:
    type: file
    name: file2
- name: e2
  from:
    type: file
    name: file2
  to:
    type: file
    name: file3
`;

const MGMT_FILES = `---
graph: mygraph
resources:
  noop:
  - name: noop1
  file:
  - name: file1
    path: "/tmp/mgmt/f1"
    content: |
      i am f1
    state: exists
  - name: file2
    path: "/tmp/mgmt/f2"
    content: |
      i am f2
    state: exists
  - name: file3
    path: "/tmp/mgmt/f3"
    content: |
      i am f3
    state: exists
  - name: file4
    path: "/tmp/mgmt/f4"
    content: |
      i am f4 and i should not be here
    state: absent
edges:
- name: e1
  from:
    kind: file
    name: file1
  to:
    kind: file
    name: file2
- name: e2
  from:
    kind: file
    name: file2
  to:
    kind: file
    name: file3
`;

function vertex(g: Graph, kind: string, name: string): Vertex {
  const v = g.vertices.get(id(kind, name));
  assert.ok(v !== undefined, `no ${kind}[${name}] in ${[...g.vertices.keys()].join(', ')}`);
  return v;
}

/** One mgmt resource, built: `kind` and the YAML lines of its list item below `- name: <name>`. */
function one(kind: string, name: string, body: string): Vertex {
  const g = build(`graph: g\nresources:\n  ${kind}:\n  - name: ${name}\n${body}`);
  return vertex(g, kind, name);
}

describe('mgmt YAML: the announcement examples load unchanged', () => {
  for (const [label, text] of [
    ['2016 form (types, type)', MGMT_EXEC_2016],
    ['res form', MGMT_EXEC_RES],
    ['current form (resources, kind)', MGMT_EXEC],
  ] as const) {
    test(`four execs "sleep 10s", exec1 -> exec2 -> exec3, exec4 alone: ${label}`, () => {
      const g = build(text);
      assert.deepEqual([...g.vertices.keys()], ['exec[exec1]', 'exec[exec2]', 'exec[exec3]', 'exec[exec4]']);
      for (const v of g.vertices.values()) {
        // mgmt's zero values are dropped, and the command is run without a shell as mgmt does: split into words.
        assert.deepEqual(v.params, { cmd: ['sleep', '10s'], shell: false, env: {}, timeout: 0, refreshOnly: false }, v.id);
        assert.deepEqual(v.meta, defaultMeta, v.id);
      }
      assert.deepEqual(edgeTexts(g), ['exec[exec1] -> exec[exec2]', 'exec[exec2] -> exec[exec3]']);
      assert.deepEqual(g.dependencies(id('exec', 'exec4')), []);
      assert.deepEqual(g.dependents(id('exec', 'exec4')), []);
      assert.deepEqual(vertex(g, 'exec', 'exec1').loc, { file: GRAPH_FILE, line: 5, col: 5 });
      assert.equal(vertex(g, 'exec', 'exec4').loc?.line, 35);
    });
  }

  for (const [label, text] of [
    ['2016 form (types, type)', MGMT_FILES_2016],
    ['current form (resources, kind)', MGMT_FILES],
  ] as const) {
    test(`files file1..file4 (exists/absent), a noop, edges e1 and e2: ${label}`, () => {
      const g = build(text);
      assert.deepEqual(
        [...g.vertices.keys()].sort(),
        ['file[file1]', 'file[file2]', 'file[file3]', 'file[file4]', 'noop[noop1]'],
      );
      const f1 = vertex(g, 'file', 'file1');
      assert.deepEqual(f1.params, { path: '/tmp/mgmt/f1', content: 'i am f1\n', state: 'exists', type: 'file', purge: false, force: false });
      assert.equal(f1.loc?.line, 7);
      for (const n of [2, 3]) {
        const p = vertex(g, 'file', `file${n}`).params as { path: string; content: string; state: string };
        assert.deepEqual([p.path, p.content, p.state], [`/tmp/mgmt/f${n}`, `i am f${n}\n`, 'exists']);
      }
      const f4 = vertex(g, 'file', 'file4').params as { path: string; state: string };
      assert.deepEqual([f4.path, f4.state], ['/tmp/mgmt/f4', 'absent']);
      assert.deepEqual(vertex(g, 'noop', 'noop1').params, {});
      assert.deepEqual(edgeTexts(g), ['file[file1] -> file[file2]', 'file[file2] -> file[file3]']);
    });
  }

  test('the examples are recognised as mgmt graphs; native graphs are not', () => {
    for (const text of [MGMT_EXEC_2016, MGMT_EXEC_RES, MGMT_EXEC, MGMT_FILES_2016, MGMT_FILES, 'resources:\n  noop:\n  - name: a\n', 'types:\n  noop: []\n']) {
      assert.equal(isMgmtGraph(parseYamlDocument('f', text)), true, text.slice(0, 40));
    }
    for (const text of ['resources:\n  - { kind: noop, name: a }\n', 'resources: []\n', '', '- a\n']) {
      assert.equal(isMgmtGraph(parseYamlDocument('f', text)), false, text);
    }
  });
});

describe('mgmt YAML: exec parameters', () => {
  test('a cmd without a shell is split into argv words, as mgmt runs it', () => {
    const v = one('exec', 'e', "    cmd: '  /usr/bin/printf   %s\\n   x  '\n");
    assert.deepEqual((v.params as { cmd: unknown }).cmd, ['/usr/bin/printf', '%s\\n', 'x']);
  });

  test('shell: /bin/bash keeps the command a string run by that shell', () => {
    const v = one('exec', 'e', "    cmd: echo hi | tee /tmp/x && true\n    shell: /bin/bash\n");
    const p = v.params as { cmd: unknown; shell: unknown };
    assert.equal(p.cmd, 'echo hi | tee /tmp/x && true');
    assert.equal(p.shell, '/bin/bash');
  });

  test('an argv list is passed through', () => {
    const v = one('exec', 'e', '    cmd: [sleep, "1"]\n');
    assert.deepEqual((v.params as { cmd: unknown }).cmd, ['sleep', '1']);
  });

  test('timeout in seconds; watchcmd, ifcmd, pollint, cwd and env are translated', () => {
    const v = one(
      'exec',
      'e',
      `    cmd: make
    timeout: 30
    watchcmd: inotifywait -m /etc
    ifcmd: test -e /etc/ready
    pollint: 5
    cwd: /srv/app
    env: { A: "1" }
    state: present
`,
    );
    assert.deepEqual(v.params, {
      cmd: ['make'],
      shell: false,
      env: { A: '1' },
      timeout: 30_000,
      refreshOnly: false,
      cwd: '/srv/app',
      onlyif: ['test', '-e', '/etc/ready'],
      watch: { cmd: ['inotifywait', '-m', '/etc'], files: [] },
    });
    assert.equal(v.meta.poll, 5000);
  });

  test('watchshell and ifshell keep their commands strings', () => {
    const v = one('exec', 'e', "    cmd: make\n    watchcmd: 'tail -F /var/log/x | grep y'\n    watchshell: /bin/bash\n    ifcmd: 'test -e /a || test -e /b'\n    ifshell: /bin/sh\n");
    const p = v.params as { watch?: { cmd?: unknown }; onlyif?: unknown };
    assert.equal(p.watch?.cmd, 'tail -F /var/log/x | grep y');
    assert.equal(p.onlyif, 'test -e /a || test -e /b');
  });

  test('pollint does not override an explicit meta poll', () => {
    const v = one('exec', 'e', '    cmd: make\n    pollint: 5\n    meta:\n      poll: 1\n');
    assert.equal(v.meta.poll, 1000);
  });

  test('a relative cwd and an unknown field are errors at their lines', () => {
    const errors = buildErrors(`graph: g
resources:
  exec:
  - name: e
    cmd: make
    cwd: build
    colour: blue
`);
    assert.deepEqual(
      errors.map((e) => [where(e), e.resource, e.message]),
      [
        [`${GRAPH_FILE}:6:5`, 'exec[e]', 'parameter "cwd": must be an absolute path (start with /)'],
        [`${GRAPH_FILE}:7:5`, 'exec[e]', 'unknown parameter "colour"'],
      ],
    );
  });
});

describe('mgmt YAML: file parameters', () => {
  test('the path defaults to the resource name', () => {
    const v = one('file', '/etc/motd', '    content: hi\n');
    assert.equal((v.params as { path: string }).path, '/etc/motd');
  });

  test('a path ending in "/" is a directory', () => {
    const v = one('file', 'www', '    path: /srv/www/\n    state: exists\n');
    const p = v.params as { path: string; type: string };
    assert.deepEqual([p.path, p.type], ['/srv/www', 'directory']);
  });

  test('a name ending in "/" with no path is a directory too', () => {
    const v = one('file', '/srv/data/', '    state: exists\n');
    const p = v.params as { path: string; type: string };
    assert.deepEqual([p.path, p.type], ['/srv/data', 'directory']);
  });

  test('a directory from mgmt orders the files inside it (auto-edges)', () => {
    const g = build(`graph: g
resources:
  file:
  - name: f
    path: /srv/www/index.html
    content: hi
  - name: /srv/www/
`);
    assert.deepEqual(edgeTexts(g), ['file[/srv/www/] -> file[f] auto']);
  });

  test('state present or empty means exists; mgmt zero values are dropped', () => {
    const v = one('file', 'f', "    path: /tmp/f\n    state: present\n    owner: ''\n    group: ''\n    mode: ''\n    source: ''\n    recurse: false\n");
    assert.deepEqual(v.params, { path: '/tmp/f', state: 'exists', type: 'file', purge: false, force: false });
    assert.equal((one('file', 'g', "    path: /tmp/g\n    state: ''\n").params as { state: string }).state, 'exists');
  });

  test('old mgmt dirname + basename make the path', () => {
    const v = one('file', 'f', '    dirname: /etc/\n    basename: motd\n');
    assert.equal((v.params as { path: string }).path, '/etc/motd');
  });

  test('a relative path is an error at its line', () => {
    const e = onlyError('graph: g\nresources:\n  file:\n  - name: f\n    content: x\n    path: tmp/f\n');
    assert.equal(e.message, 'parameter "path": must be an absolute path (start with /)');
    assert.equal(where(e), `${GRAPH_FILE}:6:5`);
    const fromName = onlyError('graph: g\nresources:\n  file:\n  - name: file1\n    content: x\n');
    assert.equal(fromName.resource, 'file[file1]');
    assert.equal(fromName.where?.line, 4);
  });
});

describe('mgmt YAML: metaparams and edges', () => {
  test('mgmt meta delay is in milliseconds', () => {
    assert.equal(one('noop', 'a', '    meta:\n      delay: 1500\n').meta.delay, 1500);
    assert.equal(one('noop', 'a', '    meta:\n      delay: 0\n').meta.delay, 0);
    assert.equal(one('noop', 'a', '    meta:\n      delay: 2s\n').meta.delay, 2000);
  });

  test('retry, poll (seconds), sema, noop and autoedge carry over; mgmt-only metaparams are accepted and ignored', () => {
    const v = one(
      'noop',
      'a',
      `    meta:
      retry: -1
      poll: 2
      sema: ["lock:1"]
      noop: true
      autoedge: false
      autogroup: false
      limit: .inf
      burst: 0
      rewatch: true
      realize: false
`,
    );
    assert.deepEqual(v.meta, { retry: -1, delay: 0, poll: 2000, sema: ['lock:1'], noop: true, autoedge: false });
  });

  test('an unknown metaparam is an error at its line', () => {
    const e = onlyError('graph: g\nresources:\n  noop:\n  - name: a\n    meta:\n      retry: 1\n      colour: red\n');
    assert.equal(e.message, 'unknown meta "colour"');
    assert.equal(where(e), `${GRAPH_FILE}:7:7`);
  });

  test('noop comments are dropped', () => {
    assert.deepEqual(one('noop', 'a', '    comment: just a join point\n').params, {});
  });

  test('notify: true makes a notify edge; numeric names are references too', () => {
    const g = build(`graph: g
resources:
  noop:
  - name: 1
  - name: b
  - name: c
edges:
- name: e1
  from: { kind: noop, name: 1 }
  to: { kind: noop, name: b }
  notify: true
- name: e2
  from: { kind: noop, name: b }
  to: { kind: noop, name: c }
  notify: false
- name: e3
  from: { kind: noop, name: 1 }
  to: { kind: noop, name: c }
  notify: "true"
`);
    assert.deepEqual(edgeTexts(g), ['noop[1] -> noop[b] notify', 'noop[1] -> noop[c] notify', 'noop[b] -> noop[c]']);
  });
});

describe('mgmt YAML: errors carry file:line:col', () => {
  test('unknown kind, at the resource', () => {
    const e = onlyError('graph: g\nresources:\n  noop:\n  - name: a\n  fiel:\n  - name: b\n');
    assert.equal(e.code, 'E_UNKNOWN_KIND');
    assert.equal(where(e), `${GRAPH_FILE}:6:5`);
    assert.match(e.hint ?? '', /did you mean "file"\?/);
  });

  test('an edge to a resource that does not exist, at the edge', () => {
    const e = onlyError(`graph: g
resources:
  exec:
  - name: exec1
    cmd: sleep 1
edges:
- name: e1
  from: { kind: exec, name: exec1 }
  to: { kind: exec, name: exec2 }
`);
    assert.equal(e.code, 'E_MISSING_REF');
    assert.equal(e.message, 'edge refers to exec[exec2], which is not declared in this graph');
    assert.equal(where(e), `${GRAPH_FILE}:7:3`);
    assert.equal(e.hint, 'did you mean exec[exec1]?');
  });

  test('a cycle of mgmt edges', () => {
    const e = onlyError(`graph: g
resources:
  noop:
  - name: a
  - name: b
edges:
- { name: e1, from: { kind: noop, name: a }, to: { kind: noop, name: b } }
- { name: e2, from: { kind: noop, name: b }, to: { kind: noop, name: a } }
`);
    assert.equal(e.message, 'dependency cycle: noop[a] -> noop[b] -> noop[a]');
    assert.equal(e.where?.line, 4);
  });

  test('structural problems are all reported, each at its line, with a hint', () => {
    const errors = buildErrors(`graph: g
resouces: {}
resources:
  noop:
  - name: a
  - just text
  - comment: no name
  print: not a list
  exec: ~
edges:
- name: broken
  from: { kind: noop }
  to: { kind: noop, name: a }
- name: e2
  from: noop[a]
  to: noop[a]
`);
    assert.deepEqual(
      errors.map((e) => [e.where?.line, e.message]),
      [
        [2, 'unknown top-level key "resouces" in an mgmt graph'],
        [6, 'each noop resource must be a map'],
        [7, 'noop resource has no "name"'],
        [8, 'resources.print must be a list'],
        [11, 'an edge needs from: {kind, name} and to: {kind, name}'],
        [14, 'an edge needs from: {kind, name} and to: {kind, name}'],
      ],
    );
    for (const e of errors) {
      assert.equal(e.where?.file, GRAPH_FILE);
      assert.ok((e.hint ?? '').length > 0, e.format());
    }
  });

  test('"edges" must be a list', () => {
    const e = onlyError('graph: g\nresources:\n  noop:\n  - name: a\nedges:\n  e1: {}\n');
    assert.equal(e.message, '"edges" must be a list');
    assert.equal(e.where?.line, 6);
  });

  test('a YAML syntax error in an mgmt graph', () => {
    const e = onlyError('graph: g\nresources:\n  exec:\n  - name: a\n    cmd: "sleep 1\n');
    assert.equal(e.code, 'E_YAML');
    assert.equal(e.where?.file, GRAPH_FILE);
  });

  test('the raw reader keeps going past errors and locates parameters by their mgmt keys', () => {
    const src = parseYamlDocument(GRAPH_FILE, 'graph: g\nresources:\n  exec:\n  - name: x\n  - name: e\n    cmd: ls\n    timeout: 3\n');
    const raw = readMgmtGraph(src);
    assert.deepEqual(raw.errors, []);
    const e = raw.resources.find((r) => r.name === 'e');
    assert.ok(e !== undefined);
    assert.deepEqual(e.locate(['timeout']), { file: GRAPH_FILE, line: 7, col: 5 });
    assert.deepEqual(e.locate(['onlyif']), e.loc);
    assert.deepEqual(raw.resources.map((r) => r.name), ['x', 'e']);
  });
});

/** The only error reading `text` reports, with its message, location and hint. */
function refused(text: string): { message: string; at: string; hint: string } {
  const e = onlyError(text);
  return { message: e.message, at: where(e), hint: e.hint ?? '' };
}

/** One translated parameter of a built vertex. */
function param(v: Vertex, key: string): unknown {
  return (v.params as Record<string, unknown>)[key];
}

describe('mgmt YAML: translated faithfully, or refused by name', () => {
  test('pkg: state uninstalled means absent, installed stays; PackageKit flags at false are dropped', () => {
    assert.equal(param(one('pkg', 'cowsay', '    state: uninstalled\n'), 'state'), 'absent');
    assert.equal(param(one('pkg', 'cowsay', '    state: installed\n    allowuntrusted: false\n    allownonfree: false\n'), 'state'), 'installed');
  });

  test("kv: key and value carried over (key defaults to the name); a nil value withdraws the key; skiplessthan refused", () => {
    const v = one('kv', 'greeting', '    key: hello\n    value: world\n');
    assert.equal(param(v, 'key'), 'hello');
    assert.equal(param(v, 'value'), 'world');
    assert.equal(param(v, 'state'), 'present');
    assert.equal(param(one('kv', 'hello', '    value: 42\n'), 'value'), '42');
    assert.equal(param(one('kv', 'hello', '    value: null\n'), 'state'), 'absent');
    const r = refused('graph: g\nresources:\n  kv:\n  - name: n\n    value: "3"\n    skiplessthan: true\n');
    assert.match(r.message, /skiplessthan/);
    assert.equal(r.at, `${GRAPH_FILE}:6:5`);
  });

  test('pkg: state newest is refused at its line, not taken as a version string', () => {
    const r = refused('graph: g\nresources:\n  pkg:\n  - name: cowsay\n    state: newest\n');
    assert.match(r.message, /pkg state "newest"/);
    assert.equal(r.at, `${GRAPH_FILE}:5:5`);
    assert.match(r.hint, /state: installed .* exact version/);
  });

  test('pkg: a PackageKit flag set to true is refused by name', () => {
    const r = refused('graph: g\nresources:\n  pkg:\n  - name: cowsay\n    allowuntrusted: true\n');
    assert.match(r.message, /allowuntrusted/);
    assert.equal(r.at, `${GRAPH_FILE}:5:5`);
  });

  test("remote: mgmt's own remote1 example is refused, not applied here", () => {
    const r = refused(`---
graph: mygraph
comment: remote noop example
resources:
  noop:
  - name: noop1
    meta:
      noop: true
  file:
  - name: file1
    path: "/tmp/mgmt-remote-hello"
    content: |
      hello world from @purpleidea
    state: exists
edges:
- name: e1
  from:
    kind: noop
    name: noop1
  to:
    kind: file
    name: file1
remote: "ssh://root:password@hostname:22"
`);
    assert.match(r.message, /mgmt's remote .* not supported/);
    assert.equal(r.at, `${GRAPH_FILE}:23:1`);
    assert.match(r.hint, /run backplane on that host/);
    // An empty remote, as mgmt writes its zero value, is fine.
    build('graph: g\nremote: ""\nresources:\n  noop:\n  - name: a\n');
  });

  test('svc (a systemd unit in mgmt) is refused with what to use instead, not a message about cmd', () => {
    const r = refused('graph: g\nresources:\n  svc:\n  - name: nginx\n    state: running\n    startup: enabled\n');
    assert.match(r.message, /mgmt's svc "nginx" manages a systemd unit/);
    assert.doesNotMatch(r.message, /required/);
    assert.match(r.hint, /cmd:/);
    assert.equal(r.at, `${GRAPH_FILE}:4:5`);
  });

  for (const kind of ['virt', 'nspawn', 'augeas', 'aws:ec2', 'password']) {
    test(`kind ${kind} is refused by name`, () => {
      const r = refused(`graph: g\nresources:\n  "${kind}":\n  - name: x\n`);
      assert.equal(r.message, `mgmt's ${kind} resources are not supported`);
      assert.equal(r.at, `${GRAPH_FILE}:3:3`);
      assert.ok(r.hint.length > 20, r.hint);
    });
  }

  test('a name starting with @@ is exported to every host under the name without it, not managed here', () => {
    const g = build('graph: g\nresources:\n  file:\n  - name: "@@/tmp/x/file1"\n    content: "hi\\n"\n  - name: /tmp/x/local\n');
    assert.deepEqual([...g.vertices.keys()], [id('file', '/tmp/x/local')]);
    assert.equal(g.exports.length, 1);
    assert.deepEqual({ ...g.exports[0], params: undefined, meta: undefined }, { kind: 'file', name: '/tmp/x/file1', to: '*', params: undefined, meta: undefined });
    assert.equal(g.exports[0]?.params['content'], 'hi\n');
  });

  test("collect: a file pattern becomes the collected files' directory; other kinds are collected as they are", () => {
    const g = build('graph: g\nresources:\n  noop:\n  - name: a\ncollect:\n- kind: file\n  pattern: /tmp/collected/\n- kind: noop\n  pattern: ""\n');
    assert.deepEqual(
      g.collect.map((r) => ({ kind: r.kind, from: r.from, set: r.set, take: r.take })),
      [
        { kind: 'file', from: '*', set: { path: '/tmp/collected/{basename}' }, take: undefined },
        { kind: 'noop', from: '*', set: {}, take: undefined },
      ],
    );
  });

  test('collect: files without a pattern are refused (the exporter would choose where root writes)', () => {
    const r = refused('graph: g\nresources:\n  noop:\n  - name: a\ncollect:\n- kind: file\n');
    assert.match(r.message, /without a pattern/);
    assert.equal(r.at, `${GRAPH_FILE}:6:3`);
    assert.match(r.hint, /pattern: \/srv\/collected\//);
  });

  test('collect: a pattern on a kind other than file is refused', () => {
    const r = refused('graph: g\nresources:\n  noop:\n  - name: a\ncollect:\n- kind: noop\n  pattern: /x\n');
    assert.match(r.message, /pattern only applies to files/);
    assert.equal(r.at, `${GRAPH_FILE}:7:3`);
  });

  test('meta limit and burst carry over; limit .inf (the default) means no limit', () => {
    const v = one('noop', 'a', '    meta:\n      limit: 0.5\n      burst: 3\n');
    assert.equal(v.meta.limit, 0.5);
    assert.equal(v.meta.burst, 3);
    const u = one('noop', 'a', '    meta:\n      limit: .inf\n      burst: 0\n');
    assert.equal(u.meta.limit, undefined);
    assert.equal(u.meta.burst, undefined);
  });

  test('meta limit with burst 0 (mgmt would never run it) is an error at the burst', () => {
    const e = onlyError('graph: g\nresources:\n  noop:\n  - name: a\n    meta:\n      limit: 2\n      burst: 0\n');
    assert.match(e.format(), /burst/);
    assert.equal(where(e), `${GRAPH_FILE}:7:7`);
  });

  for (const [key, value] of [
    ['reverse', 'true'],
    ['hidden', 'true'],
    ['export', '[h1]'],
  ] as const) {
    test(`meta ${key}: ${value} is refused by name; its zero value is accepted`, () => {
      const r = refused(`graph: g\nresources:\n  noop:\n  - name: a\n    meta:\n      ${key}: ${value}\n`);
      assert.match(r.message, new RegExp(`mgmt's ${key} metaparam`));
      assert.equal(r.at, `${GRAPH_FILE}:6:7`);
      one('noop', 'a', `    meta:\n      ${key}: ${key === 'export' ? '[]' : 'false'}\n`);
    });
  }

  test("msg: mgmt's body and capitalised priority; journal/syslog false dropped, true refused", () => {
    const v = one('msg', 'm1', '    body: hello world\n    priority: Warning\n    journal: false\n    syslog: false\n    fields: {}\n');
    assert.deepEqual(v.params, { body: 'hello world', priority: 'warning', fields: {} });
    const r = refused('graph: g\nresources:\n  msg:\n  - name: m\n    body: x\n    journal: true\n');
    assert.match(r.message, /journal: true/);
    assert.equal(r.at, `${GRAPH_FILE}:6:5`);
  });

  test('hostname: hostname (or the same static/transient one) sets both; a different one or a pretty name is refused', () => {
    assert.equal(param(one('hostname', 'h', '    hostname: web1\n    statichostname: web1\n'), 'hostname'), 'web1');
    assert.equal(param(one('hostname', 'h', '    statichostname: web2\n'), 'hostname'), 'web2');
    const r = refused('graph: g\nresources:\n  hostname:\n  - name: h\n    hostname: web1\n    transienthostname: other\n');
    assert.match(r.message, /transienthostname different from hostname/);
    const p = refused('graph: g\nresources:\n  hostname:\n  - name: h\n    hostname: web1\n    prettyhostname: "Web One"\n');
    assert.match(p.hint, /machine-info/);
  });
});
