import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { CORE_SCHEMA, dump, load } from 'js-yaml';
import { stringify } from 'yaml';
import { makeFiles } from '../../bench/lib/fileset.js';
import { seededRandom } from '../../bench/lib/stats.js';
import { backplaneGraph } from '../../bench/tools/backplane.js';
import { parseYamlDocument } from '../../src/frontends/document.js';
import { fastYamlStats, readFastYaml } from '../../src/frontends/fast-yaml.js';
import { filesUnder } from '../helpers/repo-files.js';

/**
 * The fast reader is only ever allowed two answers: exactly js-yaml's value, or "not mine". These tests hold it to
 * that on every YAML file in the repository, on what our generators write, and on thousands of random documents
 * full of the constructs where YAML readers disagree.
 */

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

type Outcome = { ok: true; value: unknown } | { ok: false; error: string };

function jsYaml(text: string): Outcome {
  try {
    return { ok: true, value: load(text, { schema: CORE_SCHEMA }) };
  } catch (err) {
    return { ok: false, error: String(err) };
  }
}

/** Compares the two readers on one text; true when the fast one answered. */
function same(text: string, what: string): boolean {
  const fast = readFastYaml(text);
  const js = jsYaml(text);
  if (!js.ok) {
    assert.equal(fast, undefined, `${what}: js-yaml fails (${js.error}) but the fast reader answered ${JSON.stringify(fast)}\n--- text ---\n${text}`);
    return false;
  }
  if (fast === undefined) return false;
  assert.deepStrictEqual(fast.value, js.value, `${what}: the readers disagree\n--- text ---\n${JSON.stringify(text)}`);
  return true;
}

function answers(text: string, what: string): void {
  assert.ok(same(text, what), `${what}: the fast reader declined (${fastYamlStats.lastDecline})`);
}

describe('fast YAML reader: the repository and our generators', () => {
  test('every YAML file and every ```yaml snippet reads the same as with js-yaml', () => {
    const files = filesUnder(ROOT, (n) => /\.ya?ml$/.test(n));
    assert.ok(files.length >= 10, `only ${files.length} YAML files found`);
    const texts: [string, string][] = files.map((f) => [relative(ROOT, f), readFileSync(f, 'utf8')]);
    for (const md of filesUnder(ROOT, (n) => n.endsWith('.md'))) {
      let i = 0;
      for (const m of readFileSync(md, 'utf8').matchAll(/^```ya?ml\n([\s\S]*?)^```/gm)) texts.push([`${relative(ROOT, md)} snippet ${++i}`, m[1] ?? '']);
    }
    let answered = 0;
    for (const [what, text] of texts) if (same(text, what)) answered++;
    // Most of them are in the subset (45 of 55 when this was written: the rest are indented README excerpts); a
    // reader that always declines fails here.
    assert.ok(answered >= texts.length / 2, `answered ${answered} of ${texts.length}`);
  });

  test('it answers for the examples in the subset, ours and mgmt\'s', () => {
    const subset = ['nginx.yaml', 'demo.yaml', 'refresh.yaml', 'mgmt/files.yaml', 'mgmt/exec-chain.yaml', 'worker/worker.yaml', 'services/namespaces.yaml'];
    for (const f of subset.map((f) => `examples/${f}`)) {
      answers(readFileSync(join(ROOT, f), 'utf8'), f);
    }
  });

  test('it answers for the graphs the bench writes (`yaml` stringify), and for js-yaml dump', () => {
    const graph = backplaneGraph({
      dir: '/tmp/fy',
      files: makeFiles('/tmp/fy', 300).map((f, i) => (i % 7 === 3 ? { ...f, content: `line one\n\n  indented: yes # not a comment\nlast\n` } : f)),
      execs: [
        { name: 'a', argv: ['/bin/sh', '-c', 'echo "a: b" # x'], after: [] },
        { name: 'b', argv: ['true'], after: ['a'] },
      ],
      nginx: {
        package: 'nginx',
        binary: '/usr/sbin/nginx',
        dir: '/etc/bp-nginx',
        port: 8080,
        docRoot: '/var/www/bp',
        index: { path: '/var/www/bp/index.html', content: '<h1>hi</h1>\n' },
        conf: '/etc/bp-nginx/nginx.conf',
        pidFile: '/run/bp-nginx.pid',
        template: 'worker_processes {{workers}};\npid /run/bp-nginx.pid;\nevents { worker_connections 512; }\n',
        vars: { workers: 2, greeting: 'hello: world' },
      },
    });
    answers(graph, 'backplaneGraph');
    const value = load(graph, { schema: CORE_SCHEMA });
    answers(dump(value), 'js-yaml dump');
    answers(stringify(value), 'yaml stringify');
  });

  test('the 100,000-file bench graph takes the fast path (a silent always-decline would cost ~0.5 s a cold run)', () => {
    // The bench's own writer for one file, repeated: `yaml` stringify of 100,000 takes ~6 s, the text is the same.
    const one = backplaneGraph({ dir: '/tmp/fy', files: [{ path: '/tmp/fy/fNNN', content: 'hello NNN\n' }], execs: [] });
    const at = one.indexOf('  - kind: file\n    name: /tmp/fy/fNNN');
    assert.ok(at > 0, one);
    const item = one.slice(at);
    const parts = [one.slice(0, at)];
    for (let i = 1; i <= 100_000; i++) parts.push(item.replaceAll('NNN', String(i).padStart(6, '0')));
    const text = parts.join('');
    const before = fastYamlStats.answered;
    const doc = parseYamlDocument('/tmp/fy/graph.yaml', text);
    assert.equal(fastYamlStats.answered, before + 1, `declined: ${fastYamlStats.lastDecline}`);
    const resources = (doc.data as { resources: unknown[] }).resources;
    assert.equal(resources.length, 100_001);
    assert.deepEqual(resources[100_000], { kind: 'file', name: '/tmp/fy/f100000', content: 'hello 100000\n', mode: '0644' });
  });
});

describe('fast YAML reader: where readers disagree', () => {
  test('scalars are typed as js-yaml types them', () => {
    const scalars = ['0644', '0o17', '0o18', '0x1F', '0x', '0b101', '0b2', '1e3', '1E3', '1.5e-3', '.5', '5.', '-0', '+0', '-0.0', '+1', '-1', '1_000', '1,000',
      '.inf', '-.inf', '+.Inf', '.INF', '.nan', '.NaN', '.NAN', 'nan', 'inf', '~', 'null', 'Null', 'NULL', 'nULL', 'true', 'True', 'TRUE', 'tRUE', 'false', 'FALSE',
      'yes', 'no', 'on', 'off', 'y', 'n', '2001-12-14', '12:30:45', '1:20', '0.1.2', '00', '09', '0009', '9007199254740993', '1e400', '-1e400', '0x' + 'f'.repeat(300),
      'file', 'directory', '/tmp/a b', 'http://x.y/z?q=1#frag', 'a#b', 'a:b', 'a,b', 'a]', 'a}', 'a[0]', "it's", 'say "hi"', '=', '<', '$HOME', '~/x', '-x', '--', '---x', '.', '..', '...x', '+', '-.', 'é', '日本',
      // A letter starts a typed scalar only as one of null's and bool's words (fast-yaml.ts TYPED_WORDS): near misses.
      'nulls', 'Nullable', 'nu', 'Trueish', 'TRUEx', 'tru', 'falsey', 'False_', 'FALS', 'Nope', 'N', 'T', 'f', 'F', 't', 'n',
      // Plain decimals are read without js-yaml (PLAIN_DECIMAL), up to 15 digits; around its edges.
      '0', '7', '28081', '100000', '999999999999999', '1000000000000000', '123456789012345', '1234567890123456', '-28081', '+28081', '01', '1_0', '10 ', '١٢',
      // A sign or a dot before anything but a digit or a dot is a string without js-yaml (an argv's flags); around it.
      '-c', '-g', '--verbose', '+x', '.x', '-.x', '+._', '._5', '.5_', '-._5', '+.5', '-.inf', '+.Inf', '-.INF', '-.nan', '.NaN', '.nAn', '.iNF', '-.Nope', '-', '+', '.', '-1a', '+0x1F', '-0b1', '-0o7', '.e3', '-.e3'];
    let answered = 0;
    for (const s of scalars) {
      for (const text of [`a: ${s}\n`, `- ${s}\n`, `${/^[A-Za-z0-9_]/.test(s) ? s : 'k'}: 1\n`, `a: [${s}]\n`, `a: {b: ${s}}\n`]) if (same(text, text)) answered++;
    }
    assert.ok(answered > scalars.length * 3, `answered ${answered}`);
    answers('a: 0644\n', 'octal-looking');
    answers('a: 1e3\n', 'float');
    answers('True: 1\nNull: 2\n0x1F: 3\n', 'typed keys');
  });

  test('duplicate keys, also after typing, are js-yaml\'s (it throws)', () => {
    for (const text of ['a: 1\na: 2\n', 'true: 1\nTrue: 2\n', '1: a\n0x1: b\n', '- a: 1\n  b: 2\n  a: 3\n', 'x: {a: 1, a: 2}\n', 'null: 1\n~: 2\n']) {
      assert.equal(readFastYaml(text), undefined, text);
      assert.equal(jsYaml(text).ok, false, text);
    }
  });

  test('quoted scalars and escapes', () => {
    for (const q of [`"a"`, `""`, `''`, `'it''s'`, `'a''''b'`, `"\\"q\\" \\\\ \\/ \\n\\t\\r\\0\\a\\b\\v\\f\\e\\ \\N\\_\\L\\P"`, `"\\x41\\u00e9\\u263A"`, `"\\ud83d\\ude00"`,
      `"\\U0001F600"`, `"\\q"`, `"\\x4"`, `"a\\"`, `"a`, `'a`, `"a" b`, `"a"  # c`, `"a"#c`, `'a' 'b'`, `"  spaced  "`, `"#not a comment"`, `"a: b"`]) {
      same(`k: ${q}\n`, q);
      same(`- ${q}\n`, q);
    }
    answers(`k: 'it''s'\nj: "tab\\tand \\u00e9"\n`, 'quotes');
  });

  test('literal block scalars, chomping and indentation', () => {
    const bodies = ['|\n  a\n  b\n', '|-\n  a\n\n  b\n\n', '|+\n  a\n\n\n', '|\n  a\n\n', '|\n    deep\n  shallow\n', '|\n  a\n    more\n  # not a comment\n', '|\n\n  a\n',
      '|2\n   a\n', '|\n  a\n b\n', '| # c\n  a\n', '|#c\n  a\n', '|\n  a', '|+\n  a', '|\n  \ta\n', '|\n  a  \n', '|\n  a\n      \n  b\n', '|\n', '|-\nb: 1\n', '>\n  a\n  b\n', '|\n  a\n# c\n',
      '|\n    \n  a\n', '|\n  \n  a\n', '|\n  \n\n  a\n', '|\n \n  a\n'];
    let answered = 0;
    for (const b of bodies) {
      if (same(`k: ${b}`, b)) answered++;
      if (same(`- ${b}`, b)) answered++;
      if (same(`x:\n  - k: ${b.replace(/\n(?=.)/g, '\n    ')}`, b)) answered++;
    }
    assert.ok(answered >= 20, `answered ${answered}`);
    answers('k: |\n  a\n\n  b\nnext: 1\n', 'a literal with an empty line');
  });

  test('layout: compact items, same-indent lists, comments, ---, CRLF, BOM', () => {
    const docs = ['a:\n- 1\n- 2\nb: 3\n', '- - a\n  - b\n- c\n', '- a: 1\n  b:\n  - x\n  c: 2\n', '-\n  a: 1\n', '- # c\n  a: 1\n', '---\na: 1\n', '--- # c\na: 1\n', '--- a\n',
      '---\na: 1\n---\nb: 2\n', 'a: 1\n...\n', '# only a comment\n', '', 'a: 1\n  # deeper comment\nb: 2\n', 'a: x\n  # deeper comment\n', 'a: x\n  y\n', 'a: x\n\n  y\n',
      'a:\n  b: 1\n c: 2\n', 'a: 1\r\nb:\r\n  - x\r\n', 'a: 1\rb: 2\n', '\ufeffa: 1\n', 'a: 1\n\ufeffb: 2\n', 'a:\tb\n', 'a: b\t\n', '\ta: 1\n', 'a: 1   \n', 'a:    \n', 'a: # c\n  b: 1\n',
      '  a: 1\n  b: 2\n', 'a: b: c\n', 'a : 1\n', 'a:1\n', '? a\n: 1\n', '<<: {a: 1}\n', '__proto__: 1\n', 'a: &x 1\nb: *x\n', 'a: !!str 1\n', '%YAML 1.2\n---\na: 1\n',
      'a: [1, 2,]\n', 'a: [,]\n', 'a: [a b, c]\n', 'a: [a: 1]\n', 'a: [[1]]\n', 'a: {b: 1, c: [2]}\n', 'a: {b:1}\n', 'a: [1,\n  2]\n', 'a: []\nb: {}\n', 'a: [] # c\n', 'a: []x\n',
      'a\n', '- a\nb: 1\n', 'a: 1\n- b\n', 'a:\n  - x\n  y: 1\n', 'a: "x\n  y"\n', 'a: \u0007\n', 'a: b\u0000\n', 'a: \u0085\n', 'a: 😀\n', 'x:\n- a\n  - b\n',
      // js-yaml reads `- b` as a third item of the inner list (an empty item does not check the next one's indentation).
      '-\n  - a\n  -\n- b\n', '-\n  - a\n  - # c\n- b\n'];
    for (const d of docs) same(d, JSON.stringify(d));
    answers('a:\n- 1\n- 2\nb: 3\n', 'a list at its key\'s indentation');
    answers('- - a\n  - b\n- c\n', 'nested compact lists');
    answers('\ufeff---\r\na: 1\r\n', 'BOM, --- and CRLF');
  });

  test('deep nesting is js-yaml\'s to refuse', () => {
    let text = '';
    for (let i = 0; i < 120; i++) text += `${' '.repeat(i)}k:\n`;
    assert.equal(readFastYaml(text + `${' '.repeat(120)}v: 1\n`), undefined);
    let shallow = '';
    for (let i = 0; i < 40; i++) shallow += `${' '.repeat(i)}k:\n`;
    answers(shallow + `${' '.repeat(40)}v: 1\n`, '40 levels');
  });
});

/** Keys and scalars: the first list in the subset, the second where readers disagree (picked 1 time in 10). */
const KEYS = [['a', 'b', 'c', 'kind', 'name', 'mode', 'a.b', 'a/b', 'a-b', '_x', '1', '01', '0x1', 'true', 'True', 'null', 'Null', 'on', 'constructor', 'toString', '1e3'],
  ['~', 'x y', '"q"', "'q'", '<<', '__proto__', '.5', '-1', 'k#', 'é', '? a', 'a :']] as const;
const SCALARS = [['x', 'file', '0644', '0o17', '1e3', '.5', '-0', '+1', '0x1F', '1_000', '.inf', '-.Inf', '.NaN', '~', 'Null', 'TRUE', 'yes', 'no', 'on', 'off', '"quoted"',
  "'it''s'", '"esc \\n \\t \\" \\\\ \\x41 \\u00e9"', 'a # comment', 'a#b', 'a:b', 'http://x.y/z?q=1#frag', 'with  two  spaces', '[a, "b", 3]', '[]', '{}',
  '{a: 1, b: x}', '[a,]', '[ ]', '{ }', '-x', 'é', '---', '日本', '"0644"', "''", '[a, [b]]', '{a: [1, "2"], b: {c: d}}', '[[], {}, [[x]]]'],
  ['"\\U0001F600"', '"\\q"', 'a: b', 'a:', '[a, {b}]', '{a: {b: 1, b: 2}}', '[{a: 1}: x]', '{[a]: 1}', '[a, [b]', '&anc x', '*anc', '!!str 1', '!tag x', '- x', '? x', ': x', '%x', '@x', '`x', '|x', '>', "'unclosed", '"unclosed',
  '...', '# just a comment', '']] as const;
const BLOCK_LINES = ['text', 'more text', '  indented', '# hash', 'a: b', '', ' ', '\t tab', '- dash', '"q"'];

function pick<T>(r: () => number, list: readonly T[]): T {
  return list[Math.floor(r() * list.length)] as T;
}

/** A random document: mostly the shapes graphs have, with every tricky construct mixed in now and then. */
function randomDocument(r: () => number): string {
  const lines: string[] = [];
  const scalar = (): string => pick(r, SCALARS[r() < 0.1 ? 1 : 0]);
  const key = (): string => pick(r, KEYS[r() < 0.1 ? 1 : 0]);
  const literal = (indent: number): string => {
    const header = pick(r, ['|', '|', '|-', '|+', '|2', '>', '| # c']);
    const n = 1 + Math.floor(r() * 3);
    const at = indent + 1 + Math.floor(r() * 3);
    const body: string[] = [];
    for (let i = 0; i < n; i++) {
      const l = pick(r, BLOCK_LINES);
      body.push(l === '' ? ' '.repeat(Math.floor(r() * (at + 3))) : ' '.repeat(at) + l);
    }
    for (let i = Math.floor(r() * 3); i > 0; i--) body.push(r() < 0.5 ? '' : ' '.repeat(at));
    return `${header}\n${body.join('\n')}`;
  };
  const inline = (indent: number): string => (r() < 0.15 ? literal(indent) : scalar());
  const node = (indent: number, depth: number): void => {
    const entries = 1 + Math.floor(r() * 4);
    const seq = r() < 0.4;
    for (let i = 0; i < entries; i++) {
      const pad = ' '.repeat(indent);
      if (r() < 0.08) lines.push(`${' '.repeat(Math.floor(r() * (indent + 4)))}# comment`);
      if (r() < 0.05) lines.push('');
      const nested = depth < 5 && r() < 0.3;
      if (seq) {
        const form = r();
        if (form < 0.3 && depth < 5) {
          // `- key: value`, the rest of the mapping at the key's column.
          lines.push(`${pad}- ${key()}: ${inline(indent + 2)}`);
          for (let j = Math.floor(r() * 3); j > 0; j--) lines.push(`${pad}  ${key()}: ${inline(indent + 2)}`);
        } else if (form < 0.38 && depth < 5) {
          lines.push(`${pad}- - ${scalar()}`);
          if (r() < 0.5) lines.push(`${pad}  - ${scalar()}`);
        } else if (nested) {
          lines.push(`${pad}-${r() < 0.2 ? ' # c' : ''}`);
          node(indent + 1 + Math.floor(r() * 3), depth + 1);
        } else lines.push(`${pad}- ${inline(indent)}`);
      } else {
        const k = key();
        if (nested) {
          lines.push(`${pad}${k}:${r() < 0.2 ? ' # c' : ''}`);
          // A list may sit at its key's own indentation.
          node(indent + (r() < 0.15 ? 0 : 1 + Math.floor(r() * 3)), depth + 1);
        } else lines.push(`${pad}${k}: ${inline(indent)}`);
      }
    }
  };
  node(r() < 0.05 ? 1 : 0, 1);
  let text = lines.join('\n') + (r() < 0.9 ? '\n' : '');
  // Damage: what editors and people do to files.
  const damage = r();
  if (damage < 0.05) text = text.replaceAll('\n', '\r\n');
  else if (damage < 0.08) text = `\ufeff${text}`;
  else if (damage < 0.12) text = `---\n${text}`;
  else if (damage < 0.2) text = text.replace(/\n/g, (m) => (r() < 0.2 ? `  ${m}` : m));
  else if (damage < 0.35) {
    const at = Math.floor(r() * text.length);
    const op = pick(r, ['delete', ' ', '\t', ':', '#', '"', "'", '-', '\n', '  ', '[', '{', '&', '\r']);
    text = op === 'delete' ? text.slice(0, at) + text.slice(at + 1) : text.slice(0, at) + op + text.slice(at);
  }
  return text;
}

describe('fast YAML reader: random documents', () => {
  test('4,000 seeded documents: the same value as js-yaml, or declined; js-yaml errors are always declined', (t) => {
    let answered = 0;
    let errors = 0;
    // FAST_YAML_SEEDS=300000 for a longer search (it found js-yaml's "empty item, then a less indented item" quirk).
    const N = Number(process.env['FAST_YAML_SEEDS'] ?? 4000);
    const why = new Map<string, number>();
    for (let seed = 1; seed <= N; seed++) {
      const text = randomDocument(seededRandom(seed));
      if (!jsYaml(text).ok) errors++;
      if (same(text, `seed ${seed}`)) answered++;
      else why.set(fastYamlStats.lastDecline, (why.get(fastYamlStats.lastDecline) ?? 0) + 1);
    }
    t.diagnostic(`answered ${answered}, js-yaml errors ${errors}; declined: ${JSON.stringify([...why].sort((a, b) => b[1] - a[1]))}`);
    // Both kinds must be common, or the generator tests nothing (measured: ~40% answered, ~30% js-yaml errors).
    assert.ok(answered > N / 5, `answered only ${answered} of ${N}`);
    assert.ok(errors > N / 10, `only ${errors} of ${N} were errors`);
  });
});
