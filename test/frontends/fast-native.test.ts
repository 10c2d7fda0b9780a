import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { makeFiles } from '../../bench/lib/fileset.js';
import { seededRandom } from '../../bench/lib/stats.js';
import { backplaneGraph } from '../../bench/tools/backplane.js';
import { ValidationErrors } from '../../src/errors.js';
import { parseYamlDocument } from '../../src/frontends/document.js';
import { fastYamlStats } from '../../src/frontends/fast-yaml.js';
import { parseGraphText } from '../../src/frontends/load.js';
import { sourcePath } from '../../src/frontends/raw-builders.js';
import { isMgmtGraph } from '../../src/frontends/yaml-mgmt.js';
import { readFastNativeGraph, readNativeGraph } from '../../src/frontends/yaml-native.js';
import { PRECISE_MAX_BYTES } from '../../src/frontends/limits.js';
import type { RawGraph } from '../../src/graph/raw.js';
import { filesUnder } from '../helpers/repo-files.js';

/**
 * readFastNativeGraph reads a graph straight into resources, with no document in between. It may answer only with
 * exactly what js-yaml's value read by readNativeGraph gives (every resource, parameter, key order, location and
 * edge), or decline. These tests hold it to that on every YAML file in the repository and on thousands of random
 * graphs.
 */

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const FILE = '/etc/backplane/site.yaml';

/** Everything buildGraph and the graph cache read of a raw graph, locations included, as plain data. */
function plainGraph(g: RawGraph): unknown {
  return {
    source: g.source,
    resources: g.resources.map((r) => ({
      kind: r.kind,
      name: r.name,
      // Entries, not the object: their order is compared too.
      params: Object.entries(r.params),
      meta: r.meta,
      export: r.export,
      has: { export: 'export' in r, origin: 'origin' in r },
      path: sourcePath(r),
      loc: r.loc,
      at: r.locate(['content']),
      atMeta: r.locateMeta(['retry']),
    })),
    edges: g.edges.map((e) => ({ from: e.from, to: e.to, notify: e.notify, loc: e.loc })),
    errors: g.errors.map((e) => e.message),
    collect: g.collect,
  };
}

type General = { kind: 'graph'; graph: RawGraph } | { kind: 'mgmt' } | { kind: 'error'; error: unknown };

/** What the general path makes of the text, with js-yaml reading it (not the fast reader). */
function general(text: string): General {
  try {
    const doc = parseYamlDocument(FILE, text, { fast: false });
    if (isMgmtGraph(doc)) return { kind: 'mgmt' };
    return { kind: 'graph', graph: readNativeGraph(doc) };
  } catch (error) {
    return { kind: 'error', error };
  }
}

/** Compares the two paths on one text; true when the fast one answered. */
function same(text: string, what: string): boolean {
  const fast = readFastNativeGraph(FILE, text);
  if (fast === undefined) return false;
  const g = general(text);
  const show = `\n--- text ---\n${text}`;
  assert.equal(g.kind, 'graph', `${what}: the fast path answered, the general one gave ${g.kind === 'error' ? String(g.error) : g.kind}${show}`);
  if (g.kind !== 'graph') return true;
  assert.deepEqual(g.graph.errors, [], `${what}: the fast path answered a graph the general path reports on${show}`);
  assert.deepStrictEqual(plainGraph(fast), plainGraph(g.graph), `${what}: the paths disagree${show}`);
  return true;
}

function pick<T>(r: () => number, list: readonly T[]): T {
  return list[Math.floor(r() * list.length)] as T;
}

const RESERVED_KEYS = ['kind', 'name', 'meta', 'export', 'require', 'before', 'notify', 'subscribe'];
const PARAM_KEYS = ['content', 'mode', 'path', 'owner', 'type', 'cmd', '1', '0x1', 'true', 'constructor', 'toString', 'a.b', 'x-y'];
const SCALARS = ['file', 'exec', '/etc/motd', '"/srv/a b"', "'it''s'", '"hello\\n"', '"0644"', '0644', '644', '0o644', '0x1a4', '644.0', '1e3', '~', 'null', 'true', 'no', '12', '-1', '.5',
  '[]', '{}', '[a, "b", 3]', '{retry: 3, delay: 2s}', '"file[/etc/motd]"', 'file:/etc', '[file:/a, "exec[b]"]', '[1, 2]', '"*"', '[web1, web2]', '""', 'é', '日本', 'a # comment'];
const BLOCK = ['|\n{i}hello\n', '|-\n{i}one\n{i}two\n', '|+\n{i}x\n\n', '|\n{i}a\n\n{i}b\n'];

/** Collect rules, before or after the resources: read as the general path reads them, a bad one declined. */
const COLLECT = ['collect:\n  - kind: file\n    set: {path: "/srv/in/{basename}"}', 'collect:\n  - kind: file\n    from: [web1]\n    take: [content]\n    set:\n      mode: 0644',
  'collect: [{kind: file}]', 'collect:\n  - from: x', 'collect:\n  - kind: file\n    set: {mode: 0o600}\n  - kind: exec\n    other: 1', 'collect: x'];

/** A random graph: mostly the shape a graph file has, with problems and other shapes mixed in now and then. */
function randomGraph(r: () => number): string {
  const lines: string[] = [];
  if (r() < 0.1) lines.push(pick(r, ['# a graph', '---', '']));
  if (r() < 0.05) lines.push(pick(r, ['collect:', 'collect: []', 'other: 1', 'graph: x', 'resources: []', 'resources:', 'resources: x']));
  if (r() < 0.1) lines.push(pick(r, COLLECT));
  lines.push(pick(r, ['resources:', 'resources:', 'resources: # c', 'resources:  ']));
  const pad = r() < 0.2 ? '' : ' '.repeat(1 + Math.floor(r() * 3));
  const items = 1 + Math.floor(r() * 6);
  for (let i = 0; i < items; i++) {
    if (r() < 0.05) lines.push(pick(r, [`${pad}- x`, `${pad}-`, `${pad}- [a]`, `${pad}- - a`, `${pad}# comment`, '']));
    const keys: string[] = [];
    if (r() < 0.95) keys.push('kind');
    if (r() < 0.95) keys.push('name');
    for (let k = Math.floor(r() * 4); k > 0; k--) {
      const key = r() < 0.3 ? pick(r, RESERVED_KEYS) : pick(r, PARAM_KEYS);
      // Now and then a duplicate key (js-yaml refuses it).
      if (!keys.includes(key) || r() < 0.05) keys.push(key);
    }
    // Shuffled: kind and name need not come first.
    if (r() < 0.3) keys.sort(() => r() - 0.5);
    if (keys.length === 0) keys.push('name');
    const at = `${pad}  `;
    keys.forEach((key, j) => {
      // Mostly what each key takes, now and then anything.
      const any = r() < 0.1;
      let value = any ? pick(r, SCALARS)
        : key === 'kind' ? pick(r, ['file', 'file', 'exec', '1', 'true'])
        : key === 'name' ? `/srv/f${i}`
        : key === 'export' ? pick(r, ['true', '"*"', 'web1', '[web1, web2]', 'false', '~'])
        : RESERVED_KEYS.slice(4).includes(key) ? pick(r, ['"file[/srv/f0]"', 'file:/srv/f1', '[file:/a, "exec[b]"]', '[]', '~'])
        : pick(r, SCALARS);
      if (r() < 0.1) value = pick(r, BLOCK).replaceAll('{i}', `${at}  `).replace(/\n$/, '');
      else if (key === 'meta' && r() < 0.3) value = `\n${at}  retry: 3\n${at}  delay: 2s`;
      else if (RESERVED_KEYS.slice(4).includes(key) && r() < 0.3) value = `\n${at}  - "file[/srv/f0]"\n${at}  - exec:x`;
      lines.push(`${j === 0 ? `${pad}- ` : at}${key}:${value === '' || value.startsWith('\n') ? '' : ' '}${value}`);
    });
  }
  if (r() < 0.05) lines.push(pick(r, ['collect:', 'other: 1', 'resources: []']));
  else if (r() < 0.1) lines.push(pick(r, COLLECT));
  return lines.join('\n') + (r() < 0.9 ? '\n' : '');
}

describe('native graphs read straight into resources', () => {
  test('every graph in the repository reads the same as through js-yaml and readNativeGraph', () => {
    const texts: [string, string][] = filesUnder(ROOT, (n) => /\.ya?ml$/.test(n)).map((f) => [relative(ROOT, f), readFileSync(f, 'utf8')]);
    for (const md of filesUnder(ROOT, (n) => n.endsWith('.md'))) {
      let i = 0;
      for (const m of readFileSync(md, 'utf8').matchAll(/^```ya?ml\n([\s\S]*?)^```/gm)) texts.push([`${relative(ROOT, md)} snippet ${++i}`, m[1] ?? '']);
    }
    let answered = 0;
    for (const [what, text] of texts) if (same(text, what)) answered++;
    // A reader that always declines fails here (20 of the repository's graphs when this was written).
    assert.ok(answered >= 10, `answered ${answered} of ${texts.length}`);
    assert.ok(same(readFileSync(join(ROOT, 'examples/nginx.yaml'), 'utf8'), 'examples/nginx.yaml'), `declined: ${fastYamlStats.lastDecline}`);
  });

  test('4,000 seeded random graphs: the same raw graph, or declined; every graph with a problem is declined', (t) => {
    let answered = 0;
    let problems = 0;
    const N = Number(process.env['FAST_YAML_SEEDS'] ?? 4000);
    const why = new Map<string, number>();
    for (let seed = 1; seed <= N; seed++) {
      const text = randomGraph(seededRandom(seed));
      const g = general(text);
      if (g.kind !== 'graph' || g.graph.errors.length > 0) problems++;
      if (same(text, `seed ${seed}`)) answered++;
      else why.set(fastYamlStats.lastDecline, (why.get(fastYamlStats.lastDecline) ?? 0) + 1);
    }
    t.diagnostic(`answered ${answered}, with problems ${problems}; declined: ${JSON.stringify([...why].sort((a, b) => b[1] - a[1]))}`);
    // Both must be common, or the generator tests nothing.
    assert.ok(answered > N / 4, `answered only ${answered} of ${N}`);
    assert.ok(problems > N / 10, `only ${problems} of ${N} had problems`);
  });

  test('parseGraphText takes this path for a graph it can read, the general one for a graph with a problem', () => {
    const good = 'resources:\n  - kind: file\n    name: /srv/a\n    content: |\n      hello\n    mode: "0644"\n';
    const before = fastYamlStats.listsAnswered;
    const raw = parseGraphText(FILE, good);
    assert.equal(fastYamlStats.listsAnswered, before + 1, `declined: ${fastYamlStats.lastDecline}`);
    assert.deepEqual(raw.resources[0]?.params, { content: 'hello\n', mode: '0644' });
    // The shapes the benches write: `yaml` stringify (block scalars), and the scale bench's JSON-quoted strings.
    const files = makeFiles('/tmp/fy', 3);
    const shapes = [
      backplaneGraph({ dir: '/tmp/fy', files, execs: [] }),
      ['resources:', '  - kind: file\n    name: "/tmp/fy"\n    type: directory', ...files.map((f) => `  - kind: file\n    name: ${JSON.stringify(f.path)}\n    content: ${JSON.stringify(f.content)}\n    mode: "0644"`)].join('\n') + '\n',
    ];
    for (const text of shapes) assert.ok(same(text, text), `declined: ${fastYamlStats.lastDecline}`);
    // A resource without a name: reported, at its line, as before.
    const bad = 'resources:\n  - kind: file\n    name: /srv/a\n  - kind: file\n    content: x\n';
    assert.equal(readFastNativeGraph(FILE, bad), undefined);
    const reported = parseGraphText(FILE, bad);
    assert.deepEqual(
      reported.errors.map((e) => [e.message, e.where?.line]),
      [['file resource has no "name"', 4]],
    );
    assert.equal(reported.resources.length, 1);
  });

  test('collect rules before or after the resources are read with them, numeric modes included', () => {
    const rules = 'collect:\n  - kind: file\n    from: web1\n    set:\n      path: "/srv/in/{basename}"\n      mode: 0640\n';
    const list = 'resources:\n  - kind: file\n    name: /srv/a\n    mode: 0644\n';
    for (const text of [rules + list, list + rules]) {
      assert.ok(same(text, text), `declined: ${fastYamlStats.lastDecline}`);
      const raw = readFastNativeGraph(FILE, text);
      assert.deepEqual(raw?.collect?.map((c) => [c.kind, c.from, c.set]), [['file', ['web1'], { path: '/srv/in/{basename}', mode: '0640' }]]);
      assert.equal(raw?.resources[0]?.params['mode'], '0644');
    }
    // An unknown top-level key is the general path's to report.
    assert.equal(readFastNativeGraph(FILE, `${list}other: 1\n`), undefined);
  });

  test('an item with many keys: read whole, and a duplicate key after the sixteenth is still js-yaml\'s to refuse', () => {
    const keys = Array.from({ length: 20 }, (_, i) => `    p${i}: ${i}`);
    const item = (extra: string): string => `resources:\n  - kind: file\n    name: /srv/a\n${keys.join('\n')}\n${extra}`;
    assert.ok(same(item('    meta: {retry: 2}\n'), 'many keys'), `declined: ${fastYamlStats.lastDecline}`);
    for (const dup of ['    p3: again\n', '    kind: exec\n', '    meta: 1\n    meta: 2\n']) {
      assert.equal(readFastNativeGraph(FILE, item(dup)), undefined, dup);
      assert.equal(general(item(dup)).kind, 'error', dup);
    }
  });

  test('a mode written as an unquoted number gets its text back, as through the document', () => {
    const text = 'resources:\n  - kind: file\n    name: /srv/a\n    mode: 0644\n  - kind: file\n    name: /srv/b\n    mode: 0o600\n';
    assert.ok(same(text, 'unquoted modes'), `declined: ${fastYamlStats.lastDecline}`);
    assert.deepEqual(readFastNativeGraph(FILE, text)?.resources.map((r) => r.params['mode']), ['0644', '0o600']);
    // Too large for the precise parser: the digits as read, and a mode it cannot read back is refused, as before.
    const pad = `# ${'x'.repeat(PRECISE_MAX_BYTES)}\n`;
    const big = `${pad}resources:\n  - kind: file\n    name: /srv/a\n    mode: 0644\n`;
    assert.deepEqual(readFastNativeGraph(FILE, big)?.resources.map((r) => r.params['mode']), ['644']);
    const odd = `${pad}resources:\n  - kind: file\n    name: /srv/a\n    mode: 0644\n  - kind: file\n    name: /srv/b\n    mode: 0o600\n`;
    const refusal = (f: () => unknown): string => {
      try {
        f();
      } catch (err) {
        assert.ok(err instanceof ValidationErrors);
        return err.errors.map((e) => `${e.message} @ ${e.where?.file}`).join('\n');
      }
      assert.fail('expected a refusal');
    };
    assert.equal(
      refusal(() => readFastNativeGraph(FILE, odd)),
      refusal(() => readNativeGraph(parseYamlDocument(FILE, odd, { fast: false }))),
    );
  });
});
