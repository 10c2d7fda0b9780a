import assert from 'node:assert/strict';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { modeHasSpecialBits, parseFileMode } from '../../src/graph/file-mode.js';
import { runCli } from '../helpers/cli.js';
import { build, id, onlyError, where } from '../helpers/graph.js';

function modeOf(text: string, name = '/tmp/m', kind = 'file'): unknown {
  const params = build(text).vertices.get(id(kind, name))?.params;
  return params !== null && typeof params === 'object' && 'mode' in params ? params.mode : undefined;
}

const native = (mode: string): string => `resources:\n  - kind: file\n    name: /tmp/m\n    content: x\n    mode: ${mode}\n`;

describe('file modes written in YAML', () => {
  test('644, 0644, "0644" and 0o644 all mean 0644; 4755 unquoted is setuid as chmod reads it', () => {
    for (const m of ['644', '0644', '"0644"', "'644'", '0o644']) assert.equal(modeOf(native(m)), 0o644, m);
    assert.equal(modeOf(native('755')), 0o755);
    assert.equal(modeOf(native('4755')), 0o4755);
    assert.equal(modeOf(native('0600')), 0o600);
    // In a flow map and through an alias, the text written is what counts too.
    assert.equal(modeOf('resources:\n  - { kind: file, name: /tmp/m, content: x, mode: 640 }\n'), 0o640);
    const aliased = 'resources:\n  - { kind: file, name: /tmp/a, content: x, mode: &m 750 }\n  - { kind: file, name: /tmp/m, content: x, mode: *m }\n';
    assert.equal(modeOf(aliased), 0o750);
    assert.equal(modeOf(aliased, '/tmp/a'), 0o750);
  });

  test('a number chmod would not take is refused at its line, with what to write', () => {
    for (const [m, why] of [
      ['648', /"648" is not a file mode: 8 is not an octal digit; write the permission bits in octal \("0644", "0755"\) or symbolically/],
      ['1800', /"1800" is not a file mode: 8 is not an octal digit/],
      ['644.0', /"644.0" is not a file mode/],
      ['0x1a4', /"0x1a4" is not a file mode/],
      ['64', /"64" is not a file mode: a mode has 3 or 4 octal digits/],
    ] as const) {
      const e = onlyError(native(m));
      assert.match(e.message, why, m);
      assert.equal(where(e), '/test/graph.yaml:5:5', m);
    }
  });

  test('in a file too large for the precise parser, plain digits still read as chmod does and other forms are refused', () => {
    const pad = `# ${'x'.repeat(4.2 * 1024 * 1024)}\n`;
    assert.equal(modeOf(pad + native('0644')), 0o644);
    assert.equal(modeOf(pad + native('"u=rw,go=r"')), 0o644);
    const e = onlyError(pad + native('0o644'));
    assert.match(e.message, /an unquoted mode written as "0o644" cannot be read back in a file this large/);
    assert.match(where(e), /graph\.yaml: resources\[0\]\.mode/);
  });

  test('mgmt graphs read unquoted modes the same way', () => {
    assert.equal(modeOf('graph: g\nresources:\n  file:\n    - name: f\n      path: /tmp/m\n      content: x\n      mode: 644\n', 'f'), 0o644);
  });

  test('templates and collect rules too; a `mode` in a template\'s vars is the user\'s data and stays a number', () => {
    const g = build('resources:\n  - { kind: template, name: /tmp/t, template: "x", mode: 0640, vars: { mode: 644 } }\ncollect:\n  - { kind: file, set: { path: "/srv/{basename}", mode: 640 } }\n');
    const params = g.vertices.get(id('template', '/tmp/t'))?.params as { mode: unknown; vars: { mode: unknown } };
    assert.equal(params.mode, 0o640);
    assert.equal(params.vars.mode, 644);
    assert.equal(g.collect[0]?.set['mode'], '640', 'read as text, so the collected file gets 0640');
  });
});

describe('symbolic modes (absolute forms)', () => {
  test('each class assigned with = gives the whole mode', () => {
    const cases: [string, number][] = [
      ['u=rw,go=r', 0o644],
      ['u=rwx,g=rx,o=', 0o750],
      ['a=rx,u=rwx', 0o755],
      ['ug=rw,o=r', 0o664],
      ['a=', 0o000],
      ['u=rwxs,go=rx', 0o4755],
      ['u=rwx,g=rxs,o=rx', 0o2755],
      ['a=rwxt', 0o1777],
      ['a=rwx,u=rw', 0o677],
    ];
    for (const [text, mode] of cases) assert.deepEqual(parseFileMode(text), { ok: true, mode }, text);
    assert.equal(modeOf(native('u=rw,go=r')), 0o644);
  });

  test('relative forms and partial modes are refused with the absolute form to write', () => {
    const refused: [string, RegExp][] = [
      ['a+x', /^"a\+x" changes bits relative to the mode found on disk.*assign every class with "="/],
      ['u=rwx,go-w', /^"u=rwx,go-w": "go-w" changes bits relative to the mode found on disk/],
      ['u=rw', /does not say what g and o may do.*"u=rw,go="/],
      ['u=rwX,go=rX', /"X" in "u=rwX" is not r, w, x, s or t/],
      ['g=u,u=rw,o=', /"u" in "g=u" is not r, w, x, s or t/],
      ['=rw', /names no class/],
      ['o=rws,ug=rw', /"s" in "o=rws" applies to u or g/],
      ['u=rwt,go=r', /"t" in "u=rwt" applies to o or a/],
    ];
    for (const [text, why] of refused) {
      const m = parseFileMode(text);
      assert.equal(m.ok, false, text);
      if (!m.ok) assert.match(m.message, why, text);
    }
  });

  test('special bits are seen in every form, so a collect rule cannot be slipped a setuid bit', () => {
    for (const m of ['4755', '0o4755', 'u=rwxs,go=rx', 'a=rwxt', 0o2755, 'not a mode']) assert.equal(modeHasSpecialBits(m), true, String(m));
    for (const m of ['0755', '0o755', 'u=rwx,go=rx', 0o644]) assert.equal(modeHasSpecialBits(m), false, String(m));
  });
});

describe('on a real file', () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bp-mode-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('run applies mode: 644 as 0644 and a symbolic mode as written; graph --format json prints modes in octal', async () => {
    const graph = join(dir, 'g.yaml');
    await writeFile(
      graph,
      `resources:\n  - { kind: file, name: ${dir}/a, content: "a\\n", mode: 644 }\n  - { kind: file, name: ${dir}/b, content: "b\\n", mode: "u=rwx,g=rx,o=" }\n`,
    );
    const r = await runCli(['run', '-f', graph, '--converged-timeout', '0', '--state-dir', join(dir, 'state')]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await stat(join(dir, 'a'))).mode & 0o7777, 0o644);
    assert.equal((await stat(join(dir, 'b'))).mode & 0o7777, 0o750);
    const j = await runCli(['graph', '-f', graph, '--format', 'json']);
    assert.equal(j.code, 0, j.stderr);
    const out = JSON.parse(j.stdout) as { resources: { name: string; params: { mode?: unknown } }[] };
    assert.deepEqual(
      out.resources.map((x) => [x.name, x.params.mode]).sort(),
      [
        [`${dir}/a`, '0644'],
        [`${dir}/b`, '0750'],
      ],
    );
  });
});
