import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { graphJsonSchema } from '../../src/frontends/json-schema.js';
import { builtinKinds } from '../../src/resources/builtin-kinds.js';
import { BIN, ROOT, ensureBuilt } from '../helpers/cli.js';

const execFileP = promisify(execFile);

interface Result {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `backplane <args>` in `cwd` as a real child process; never throws for a non-zero exit. */
async function cliIn(cwd: string, ...args: string[]): Promise<Result> {
  try {
    const { stdout, stderr } = await execFileP(process.execPath, [BIN, ...args], { cwd, timeout: 30_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: unknown; stdout?: unknown; stderr?: unknown };
    if (typeof e.code !== 'number') throw err;
    return { code: e.code, stdout: String(e.stdout), stderr: String(e.stderr) };
  }
}

function cli(...args: string[]): Promise<Result> {
  return cliIn(ROOT, ...args);
}

let dir = '';
let files = 0;

/** Writes a graph into the test's temp dir and returns its absolute path. */
async function graphFile(text: string, ext = 'yaml'): Promise<string> {
  const path = join(dir, `graph-${++files}.${ext}`);
  await writeFile(path, text);
  return path;
}

const VALID = `resources:
  - kind: noop
    name: a
  - kind: print
    name: p
    msg: hello
    require: [noop:a]
  - kind: exec
    name: e
    cmd: [sleep, "0"]
    subscribe: ["print[p]"]
`;

const MGMT_EXEC = `---
graph: mygraph
resources:
  exec:
${[1, 2, 3, 4].map((n) => `  - name: exec${n}\n    cmd: sleep 10s\n    shell: ''\n    timeout: 0\n    watchcmd: ''\n    watchshell: ''\n    ifcmd: ''\n    ifshell: ''\n    pollint: 0\n    state: present\n`).join('')}edges:
- name: e1
  from:
    kind: exec
    name: exec1
  to:
    kind: exec
    name: exec2
- name: e2
  from:
    kind: exec
    name: exec2
  to:
    kind: exec
    name: exec3
`;

before(async () => {
  ensureBuilt();
  dir = await mkdtemp(join(tmpdir(), 'backplane-cli-'));
});

after(async () => {
  if (dir !== '') await rm(dir, { recursive: true, force: true });
});

describe('backplane validate', () => {
  test('a valid graph: exit 0 and a one-line summary on stdout', async () => {
    const r = await cli('validate', '-f', await graphFile(VALID));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'ok: 3 resources, 2 edges\n');
    assert.equal(r.stderr, '');
  });

  test('a collect rule taking a power parameter: exit 0, with a warning on stderr naming the rule\'s line', async () => {
    const path = await graphFile(`resources: []
collect:
  - kind: file
    from: [build1]
    take: [content, source]
    set: { path: "/srv/in/{basename}" }
`);
    const r = await cli('validate', '-f', path);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'ok: 0 resources, 0 edges, 1 warning\n');
    assert.equal(
      r.stderr,
      `warning: ${path}:3:5: collect[0].take: 'source' lets host build1 exporting file choose which local file root copies on this host\n` +
        '  hint: take it only from hosts you trust with it, or set it instead\n',
    );
  });

  test('the mgmt announcement example validates as it is', async () => {
    const r = await cli('validate', '--file', await graphFile(MGMT_EXEC));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'ok: 4 resources, 2 edges\n');
  });

  test('validating never runs anything, even a valid graph', async () => {
    const marker = join(dir, 'ran');
    const r = await cli('validate', '-f', await graphFile(`resources:\n  - kind: exec\n    name: touch\n    cmd: [touch, "${marker}"]\n`));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(existsSync(marker), false);
  });

  test('an unknown kind: exit 2, file:line:col, the hint, and that nothing was applied', async () => {
    const path = await graphFile('resources:\n  - kind: noop\n    name: a\n  - kind: exce\n    name: b\n');
    const r = await cli('validate', '-f', path);
    assert.equal(r.code, 2);
    assert.equal(r.stdout, '');
    const lines = r.stderr.split('\n');
    assert.equal(lines[0], `${path}:4:5: unknown resource kind "exce"`);
    assert.match(lines[1] ?? '', /^ {2}hint: did you mean "exec"\? known kinds: /);
    assert.equal(lines[2], '1 error; nothing was applied.');
  });

  test('malformed YAML: exit 2 and the position of the syntax error', async () => {
    const path = await graphFile('resources:\n  - kind: noop\n    name: a\n\tbad: tab\n');
    const r = await cli('validate', '-f', path);
    assert.equal(r.code, 2);
    assert.match(r.stderr, new RegExp(`^${path}:4:1: invalid YAML: `));
    assert.match(r.stderr, /hint: fix the YAML syntax/);
  });

  test('every error of the file is printed, each as file:line:col, and counted', async () => {
    const path = await graphFile(`resources:
  - kind: print
    name: p
    mesg: typo
  - kind: exec
    name: e
    cmd: [ls]
    cwd: relative/dir
  - kind: noop
    name: n
    require: [noop:missing]
  - kind: noop
    name: n
`);
    const r = await cli('validate', '-f', path);
    assert.equal(r.code, 2);
    const located = r.stderr.split('\n').filter((l) => l.startsWith(`${path}:`));
    assert.deepEqual(
      located.map((l) => l.slice(path.length + 1)),
      [
        '2:5: print[p]: parameter "msg": Invalid input: expected string, received undefined',
        '4:5: print[p]: unknown parameter "mesg"',
        '8:5: exec[e]: parameter "cwd": must be an absolute path (start with /)',
        '12:5: noop[n] is declared twice',
        '11:15: edge refers to noop[missing], which is not declared in this graph',
      ],
    );
    assert.equal(r.stderr.split('\n').filter((l) => l.startsWith('  hint: ')).length, 5);
    assert.match(r.stderr, /\n5 errors; nothing was applied\.\n$/);
  });

  test('a cycle: exit 2 and the cycle spelled out', async () => {
    const path = await graphFile('resources:\n  - { kind: noop, name: a, before: [noop:b] }\n  - { kind: noop, name: b, before: ["noop[a]"] }\n');
    const r = await cli('validate', '-f', path);
    assert.equal(r.code, 2);
    assert.match(r.stderr, new RegExp(`^${path}:2:5: dependency cycle: noop\\[a\\] -> noop\\[b\\] -> noop\\[a\\]\n`));
  });

  test('errors in an mgmt graph carry file:line:col too', async () => {
    const path = await graphFile(MGMT_EXEC.replace('    cmd: sleep 10s\n', '    cmd: sleep 10s\n    cwd: tmp\n').replace('  to:\n    kind: exec\n    name: exec3\n', '  to:\n    kind: exec\n    name: exec5\n'));
    const r = await cli('validate', '-f', path);
    assert.equal(r.code, 2);
    assert.match(r.stderr, new RegExp(`^${path}:7:5: exec\\[exec1\\]: parameter "cwd": must be an absolute path`, 'm'));
    assert.match(r.stderr, new RegExp(`^${path}:54:3: edge refers to exec\\[exec5\\], which is not declared in this graph$`, 'm'));
    assert.match(r.stderr, /2 errors; nothing was applied/);
  });

  test('a missing file: exit 2 and which file', async () => {
    const path = join(dir, 'does-not-exist.yaml');
    const r = await cli('validate', '-f', path);
    assert.equal(r.code, 2);
    assert.equal(r.stderr, `error: cannot read graph file ${path}: no such file\n  hint: check the path given to --file\n`);
  });

  test('a relative --file is read from the working directory and reported by its absolute path', async () => {
    const path = await graphFile('resources:\n  - { kind: nop, name: a }\n');
    const r = await cliIn(dir, 'validate', '-f', basename(path));
    assert.equal(r.code, 2);
    assert.ok(r.stderr.startsWith(`${path}:2:5: unknown resource kind "nop"`), r.stderr);
  });

  test('no file: exit 2, saying how to give one', async () => {
    const r = await cli('validate');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /no graph file given\n {2}hint: pass it as an argument \(FILE\) or with -f FILE/);
  });
});

describe('backplane graph', () => {
  test('--format dot (the default): a digraph of the resources and edges', async () => {
    const path = await graphFile(VALID);
    for (const args of [['graph', '-f', path], ['graph', '-f', path, '--format', 'dot']]) {
      const r = await cli(...args);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout.split('\n');
      assert.equal(lines[0], 'digraph backplane {');
      assert.ok(lines.includes('  "noop[a]" [label="noop[a]"];'), r.stdout);
      assert.ok(lines.includes('  "noop[a]" -> "print[p]";'), r.stdout);
      assert.ok(lines.includes('  "print[p]" -> "exec[e]" [style=dashed, label="notify"];'), r.stdout);
      assert.ok(r.stdout.endsWith('}\n'));
    }
  });

  test('--format json: resources in dependency order with parameters, metaparams and lines; edges', async () => {
    const path = await graphFile(`resources:
  - kind: exec
    name: last
    cmd: [sleep, "0"]
    require: ["print[p]"]
    meta: { retry: -1, delay: 250ms }
  - kind: print
    name: p
    msg: hi
    subscribe: [noop:first]
  - kind: noop
    name: first
`);
    const r = await cli('graph', '-f', path, '--format', 'json');
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as {
      source: string;
      order: string[];
      resources: { id: string; kind: string; name: string; params: unknown; meta: { retry: number; delay: number }; line: number }[];
      edges: { from: string; to: string; notify: boolean; auto: boolean }[];
    };
    assert.equal(out.source, path);
    assert.deepEqual(out.order, ['noop[first]', 'print[p]', 'exec[last]']);
    assert.deepEqual(
      out.resources.map((x) => [x.id, x.kind, x.name, x.line]),
      [
        ['noop[first]', 'noop', 'first', 11],
        ['print[p]', 'print', 'p', 7],
        ['exec[last]', 'exec', 'last', 2],
      ],
    );
    const last = out.resources[2];
    assert.deepEqual(last?.params, { cmd: ['sleep', '0'], shell: false, env: {}, timeout: 0, refreshOnly: false });
    assert.deepEqual([last?.meta.retry, last?.meta.delay], [-1, 250]);
    assert.deepEqual(
      out.edges.map((e) => `${e.from} -> ${e.to}${e.notify ? ' notify' : ''}`).sort(),
      ['noop[first] -> print[p] notify', 'print[p] -> exec[last]'],
    );
  });

  test('an invalid graph prints nothing on stdout and exits 2', async () => {
    const path = await graphFile('resources:\n  - kind: print\n    name: p\n    msg: 3\n');
    for (const format of ['dot', 'json']) {
      const r = await cli('graph', '-f', path, '--format', format);
      assert.equal(r.code, 2);
      assert.equal(r.stdout, '');
      assert.ok(r.stderr.startsWith(`${path}:4:5: print[p]: parameter "msg": `), r.stderr);
    }
  });

  test('an unknown format: exit 2 and the formats there are', async () => {
    const r = await cli('graph', '-f', await graphFile(VALID), '--format', 'svg');
    assert.equal(r.code, 2);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr, 'error: unknown format "svg"\n  hint: use --format dot or --format json\n');
  });

  test('a missing file: exit 2', async () => {
    const r = await cli('graph', '-f', join(dir, 'nope.yaml'), '--format', 'json');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /no such file/);
  });
});

describe('backplane schema and kinds', () => {
  test('schema prints the JSON Schema of the graph format as valid JSON', async () => {
    const r = await cli('schema');
    assert.equal(r.code, 0, r.stderr);
    const printed: unknown = JSON.parse(r.stdout);
    assert.deepEqual(printed, JSON.parse(JSON.stringify(graphJsonSchema(builtinKinds))));
  });

  test('kinds lists every kind with its description', async () => {
    const r = await cli('kinds');
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    assert.deepEqual(
      lines.map((l) => l.split(/\s+/)[0]),
      builtinKinds.map((k) => k.kind),
    );
    for (const k of builtinKinds) assert.ok(r.stdout.includes(k.description), k.kind);
  });

  test('an unknown command exits 2', async () => {
    const r = await cli('frobnicate');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /unknown command/);
  });
});
