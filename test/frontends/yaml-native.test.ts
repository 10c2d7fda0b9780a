import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ValidationErrors, type BackplaneError } from '../../src/errors.js';
import { parseGraphText } from '../../src/frontends/load.js';
import { isMgmtGraph } from '../../src/frontends/yaml-mgmt.js';
import { RELATION_KEYS, readNativeGraph } from '../../src/frontends/yaml-native.js';
import { parseYamlDocument } from '../../src/frontends/document.js';
import type { RawGraph, RawResource } from '../../src/graph/raw.js';

const FILE = '/etc/backplane/site.yaml';

function read(text: string): RawGraph {
  const src = parseYamlDocument(FILE, text);
  assert.equal(isMgmtGraph(src), false, 'test input must be in the native format');
  return readNativeGraph(src);
}

function resource(raw: RawGraph, name: string): RawResource {
  const r = raw.resources.find((x) => x.name === name);
  assert.ok(r !== undefined, `no resource named ${name}`);
  return r;
}

function syntaxErrors(text: string): readonly BackplaneError[] {
  try {
    parseGraphText(FILE, text);
  } catch (err) {
    if (err instanceof ValidationErrors) return err.errors;
    throw err;
  }
  assert.fail('expected a syntax error');
}

const SAMPLE = `# a small site
resources:
  - kind: file
    name: /etc/motd
    content: "hello\\n"
    mode: "0644"
    require: [file:/etc]
    meta: { retry: 3, delay: 2s }
  - kind: exec
    name: reload
    cmd: [systemctl, reload, nginx]
    watch:
      files:
        - /etc/nginx/nginx.conf
    subscribe: "file[/etc/motd]"
    notify:
      - svc:nginx
      - "svc[other]"
    before: []
`;

describe('native YAML: resources', () => {
  test('each list item is a resource with its kind, name, parameters and metaparams', () => {
    const raw = read(SAMPLE);
    assert.equal(raw.source, FILE);
    assert.deepEqual(raw.errors, []);
    assert.deepEqual(
      raw.resources.map((r) => `${r.kind}[${r.name}]`),
      ['file[/etc/motd]', 'exec[reload]'],
    );
    const motd = resource(raw, '/etc/motd');
    assert.deepEqual(motd.params, { content: 'hello\n', mode: '0644' });
    assert.deepEqual(motd.meta, { retry: 3, delay: '2s' });
    const reload = resource(raw, 'reload');
    assert.deepEqual(reload.params, { cmd: ['systemctl', 'reload', 'nginx'], watch: { files: ['/etc/nginx/nginx.conf'] } });
    assert.equal(reload.meta, undefined);
  });

  test('kind, name, meta and the relation keys never reach the parameters', () => {
    const raw = read(SAMPLE);
    for (const r of raw.resources) {
      for (const key of ['kind', 'name', 'meta', ...RELATION_KEYS]) assert.equal(key in r.params, false, `${r.name}: ${key}`);
    }
    assert.deepEqual([...RELATION_KEYS], ['require', 'before', 'notify', 'subscribe']);
  });

  test('a resource\'s location is its first key; parameters and metaparams are located by their keys', () => {
    const raw = read(SAMPLE);
    const motd = resource(raw, '/etc/motd');
    assert.deepEqual(motd.loc, { file: FILE, line: 3, col: 5 });
    assert.deepEqual(motd.locate(['mode']), { file: FILE, line: 6, col: 5 });
    assert.deepEqual(motd.locate(['missing']), motd.loc);
    assert.deepEqual(motd.locate([]), motd.loc);
    assert.deepEqual(motd.locateMeta(['delay']), { file: FILE, line: 8, col: 23 });
    assert.deepEqual(motd.locateMeta([]), { file: FILE, line: 8, col: 5 });
    const reload = resource(raw, 'reload');
    assert.equal(reload.loc.line, 9);
    assert.deepEqual(reload.locate(['watch', 'files']), { file: FILE, line: 13, col: 7 });
    assert.deepEqual(reload.locate(['watch', 'files', 0]), { file: FILE, line: 14, col: 11 });
    // Past the end of what exists: the deepest node found.
    assert.deepEqual(reload.locate(['watch', 'files', 7]), { file: FILE, line: 13, col: 7 });
    assert.deepEqual(reload.locate(['cmd', 1]), { file: FILE, line: 11, col: 22 });
    assert.deepEqual(reload.locateMeta(['retry']), reload.loc);
  });

  test('names and kinds written as numbers or booleans are read as text', () => {
    const raw = read('resources:\n  - { kind: noop, name: 8080 }\n  - { kind: noop, name: true }\n');
    assert.deepEqual(
      raw.resources.map((r) => r.name),
      ['8080', 'true'],
    );
  });

  test('an empty list has no resources and no errors', () => {
    const raw = read('resources: []\n');
    assert.deepEqual([raw.resources, raw.edges, raw.errors], [[], [], []]);
  });

  test('an empty document, or "resources:" with nothing after it, is an error: a write caught half-way looks like that', () => {
    for (const text of ['', '---\n', '# only a comment\n', 'resources:\n', 'resources: ~\n']) {
      const raw = read(text);
      assert.deepEqual(raw.resources, [], JSON.stringify(text));
      assert.equal(raw.errors.length, 1, JSON.stringify(text));
      assert.match(raw.errors[0]?.message ?? '', /is empty$/, JSON.stringify(text));
    }
  });
});

describe('native YAML: relations', () => {
  test('require/before/notify/subscribe become edges in the direction things run, with notify flags', () => {
    const raw = read(SAMPLE);
    assert.deepEqual(
      raw.edges.map((e) => [e.from, e.to, e.notify, e.loc.line]),
      [
        ['file:/etc', 'file[/etc/motd]', false, 7],
        ['exec[reload]', 'svc:nginx', true, 17],
        ['exec[reload]', 'svc[other]', true, 18],
        ['file[/etc/motd]', 'exec[reload]', true, 15],
      ],
    );
  });

  test('each reference is located at its own column in a flow list', () => {
    const raw = read('resources:\n  - { kind: noop, name: a, require: [noop:b, "noop[c]"] }\n');
    assert.deepEqual(
      raw.edges.map((e) => [e.from, e.loc.line, e.loc.col]),
      [
        ['noop:b', 2, 38],
        ['noop[c]', 2, 46],
      ],
    );
  });

  test('a relation that is not a reference is an error at the entry; the others are kept', () => {
    const raw = read(`resources:
  - kind: noop
    name: a
    require:
      - noop:b
      - 42
      - { kind: noop }
`);
    assert.deepEqual(
      raw.edges.map((e) => e.from),
      ['noop:b'],
    );
    assert.deepEqual(
      raw.errors.map((e) => [e.code, e.where?.line, e.message]),
      [
        ['E_SCHEMA', 6, '"require" entries must be resource references'],
        ['E_SCHEMA', 7, '"require" entries must be resource references'],
      ],
    );
    assert.match(raw.errors[0]?.hint ?? '', /kind\[name\] or kind:name/);
  });

  test('unbracketed kind[name] inside a flow list is a YAML error: the reference must be quoted', () => {
    const [e] = syntaxErrors('resources:\n  - { kind: noop, name: a, require: [noop[b]] }\n');
    assert.equal(e?.code, 'E_YAML');
    assert.equal(e?.where?.line, 2);
  });
});

describe('native YAML: structural errors are collected, each with file:line:col and a hint', () => {
  test('the document must be a map', () => {
    const raw = read('- kind: noop\n  name: a\n');
    assert.equal(raw.errors.length, 1);
    const e = raw.errors[0];
    assert.equal(e?.message, 'a graph file must be a map with a "resources" list');
    assert.deepEqual(e?.where, { file: FILE, line: 1, col: 1 });
    assert.match(e?.hint ?? '', /start the file with "resources:"/);
  });

  test('"resources" must be a list', () => {
    const raw = read('resources: file\n');
    assert.deepEqual(
      raw.errors.map((e) => [e.message, e.where?.line, e.where?.col]),
      [['"resources" must be a list', 1, 12]],
    );
  });

  test('an unknown top-level key, with a suggestion', () => {
    const raw = read('resource:\n  - { kind: noop, name: a }\n');
    assert.deepEqual(
      raw.errors.map((e) => [e.message, e.where?.line, e.hint]),
      [['unknown top-level key "resource"', 1, 'did you mean "resources"?']],
    );
    assert.equal(read('extra: 1\nresources: []\n').errors[0]?.hint, 'allowed: resources, collect');
  });

  test('items that are not maps, or lack a kind or a name, are each reported and skipped', () => {
    const raw = read(`resources:
  - just a string
  - name: nokind
  - kind: noop
  - kind: noop
    name: ""
  - kind: noop
    name: fine
`);
    assert.deepEqual(
      raw.errors.map((e) => [e.where?.line, e.message]),
      [
        [2, 'each resource must be a map with kind and name'],
        [3, 'resource has no "kind"'],
        [4, 'noop resource has no "name"'],
        [5, 'noop resource has no "name"'],
      ],
    );
    for (const e of raw.errors) {
      assert.equal(e.where?.file, FILE);
      assert.ok((e.hint ?? '').length > 0);
    }
    assert.deepEqual(
      raw.resources.map((r) => r.name),
      ['fine'],
    );
  });
});

describe('native YAML: syntax errors', () => {
  test('a tab used as indentation: exact line and column', () => {
    const [e] = syntaxErrors('resources:\n  - kind: noop\n    name: a\n  - kind: noop\n    name: b\n\tmsg: tab\n');
    assert.equal(e?.code, 'E_YAML');
    assert.deepEqual(e?.where, { file: FILE, line: 6, col: 1 });
    assert.match(e?.message ?? '', /^invalid YAML: .*[Tt]ab/);
  });

  test('every syntax error of the file is reported, each at its own place', () => {
    const errors = syntaxErrors(`resources:
  - kind: noop
    name: a
    msg: x: y
  - kind: noop
    name: b
    q: [a, b
`);
    assert.ok(errors.length >= 2, errors.map((e) => e.format()).join('\n'));
    assert.deepEqual(errors[0]?.where, { file: FILE, line: 4, col: 10 });
    assert.equal(errors[errors.length - 1]?.where?.line, 8);
    for (const e of errors) {
      assert.equal(e.code, 'E_YAML');
      assert.doesNotMatch(e.message, /at line \d+, column \d+/, 'the position is in `where`, not repeated in the message');
      assert.match(e.hint ?? '', /nothing was applied/);
    }
  });

  test('a duplicate key is an error, not a silent overwrite', () => {
    const [e] = syntaxErrors('resources:\n  - kind: noop\n    name: a\n    kind: print\n');
    assert.equal(e?.code, 'E_YAML');
    assert.deepEqual(e?.where, { file: FILE, line: 4, col: 5 });
  });

  test('an unterminated quote', () => {
    const [e] = syntaxErrors('resources:\n  - kind: noop\n    name: "a\n');
    assert.equal(e?.code, 'E_YAML');
    assert.match(e?.message ?? '', /quote/i);
    assert.equal(e?.where?.file, FILE);
  });
});
