import assert from 'node:assert/strict';
import { isAscii } from 'node:buffer';
import { spawnSync } from 'node:child_process';
import { chmod, copyFile, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { withTempDir } from '../helpers/engine.js';
import { BIN, ROOT, ensureBuilt } from '../helpers/cli.js';
import { resolveImport } from '../../src/cli/esm-resolve.js';
import { builtinKindNames } from '../../src/resources/registry.js';

/**
 * Start-up: the CLI is one bundled script compiled from a V8 code cache the build made (scripts/build.mjs,
 * src/cli/launcher.ts). Two things must hold. The cache is used: without it every start parses and compiles 1.6 MB
 * of JavaScript again, which nothing else would notice. And a cache that cannot be used — from another build, another
 * Node, other V8 flags, truncated, corrupt, or not trusted — costs only time: the CLI compiles from source and works.
 * The CLI never writes a cache: it runs as root, and bytecode is code.
 */

const DIST = join(ROOT, 'dist');
const CORE = ['backplane.cjs', 'backplane.mjs', 'backplane-cli.js', 'backplane-cli.cache'];
/**
 * The rest of the CLI, the packages it calls only now and then (yaml, zod) and the resource kinds but `file`, which a
 * run of an empty local graph never reads (scripts/build.mjs).
 */
const MORE = [
  'backplane-cli-more.js',
  'backplane-cli-more.cache',
  'backplane-cli-lazy.js',
  'backplane-cli-lazy.cache',
  'backplane-cli-kinds.js',
  'backplane-cli-kinds.cache',
  'backplane-cli-zod.js',
  'backplane-cli-zod.cache',
  'backplane-cli-jsyaml.js',
  'backplane-cli-jsyaml.cache',
  'backplane-cli-liquid.js',
  'backplane-cli-liquid.cache',
];
const FILES = [...CORE, ...MORE];
/** The launcher's header before V8's bytes (src/cli/launcher.ts). */
const HEADER = 96;
const haveStrace = spawnSync('strace', ['-V'], { stdio: 'ignore' }).status === 0;

interface Started {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  /** The launcher's one debug line: "used" or "not used: why". */
  readonly cache: string;
}

function start(entry: string, args: readonly string[], nodeFlags: readonly string[] = []): Started {
  const r = spawnSync(process.execPath, [...nodeFlags, entry, ...args], {
    encoding: 'utf8',
    env: { ...process.env, BACKPLANE_CODE_CACHE: 'debug', NODE_OPTIONS: '' },
    timeout: 60_000,
  });
  const line = /^backplane: code cache (.*)$/m.exec(r.stderr);
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, cache: line?.[1] ?? `(no debug line) ${r.stderr}` };
}

/** The launcher, bundle and cache copied to `dir` (mode 0644), so each test can spoil its own cache. */
async function copyDist(dir: string, files: readonly string[] = FILES): Promise<{ launcher: string; cache: string }> {
  ensureBuilt();
  for (const f of files) {
    await copyFile(join(DIST, f), join(dir, f));
    await chmod(join(dir, f), 0o644);
  }
  return { launcher: join(dir, 'backplane.cjs'), cache: join(dir, 'backplane-cli.cache') };
}

/** A one-shot run of an empty graph works: exit 0, converged. */
async function assertRuns(dir: string, launcher: string, nodeFlags: readonly string[] = []): Promise<Started> {
  const graph = join(dir, 'empty.yaml');
  await writeFile(graph, 'resources: []\n');
  const r = start(launcher, ['run', '--file', graph, '--converged-timeout', '0', '--no-api', '--state-dir', join(dir, 'state')], nodeFlags);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /converged: 0 of 0 resources/);
  return r;
}

describe('start-up: the code cache', () => {
  test('the build made a cache for this very bundle, and every start uses it', async () => {
    ensureBuilt();
    const bundle = await readFile(join(DIST, 'backplane-cli.js'), 'latin1');
    const id = /\n\/\/# backplane-build=([0-9a-f]{64})\n$/.exec(bundle)?.[1];
    assert.ok(id !== undefined, 'the bundle does not end with its build id');
    assert.ok(isAscii(Buffer.from(bundle, 'latin1')), 'the bundle is not ASCII: the launcher reads it as a one-byte string');
    const cache = await readFile(join(DIST, 'backplane-cli.cache'));
    assert.equal(cache.toString('latin1', 0, HEADER).trimEnd(), `backplane-code-cache ${id}`);
    assert.ok(((await stat(join(DIST, 'backplane-cli.cache'))).mode & 0o022) === 0, 'the cache is writable by group or others');

    await withTempDir(async (dir) => {
      const run = await assertRuns(dir, BIN);
      assert.equal(run.cache, 'used');
    });
    const version = start(BIN, ['--version']);
    assert.equal(version.code, 0, version.stderr);
    assert.equal(version.cache, 'used');
    assert.match(version.stdout, /^\d+\.\d+\.\d+/);
    // --version alone needs no command, so not the rest of the CLI that registering them all would read.
    assert.doesNotMatch(version.stderr, /code cache of backplane-cli-more/, 'backplane --version read the rest of the CLI');
    // bin/backplane.js, dist/backplane.cjs and dist/backplane.mjs are the same start.
    assert.equal(start(join(DIST, 'backplane.cjs'), ['--version']).cache, 'used');
    assert.equal(start(join(DIST, 'backplane.mjs'), ['--version']).cache, 'used');
  });

  test('a cache beside a copy of the build is still used (V8 does not tie it to a path)', async () => {
    await withTempDir(async (dir) => {
      const { launcher } = await copyDist(dir);
      assert.equal((await assertRuns(dir, launcher)).cache, 'used');
    });
  });

  // Each way a cache can be unusable: the start says why, compiles from source, and the CLI works as ever.
  const spoilt: readonly { readonly what: string; readonly spoil: (cache: string, dir: string) => Promise<void>; readonly why: RegExp; readonly flags?: readonly string[] }[] = [
    { what: 'missing', spoil: async (cache) => (await import('node:fs/promises')).rm(cache), why: /cannot open: ENOENT/ },
    { what: 'empty', spoil: (cache) => writeFile(cache, ''), why: /another build/ },
    {
      what: 'made for another build of the bundle',
      spoil: async (cache) => {
        const b = await readFile(cache);
        b.write('0'.repeat(64), 'backplane-code-cache '.length, 'latin1');
        await writeFile(cache, b);
      },
      why: /another build/,
    },
    {
      what: 'truncated',
      spoil: async (cache) => {
        const b = await readFile(cache);
        await writeFile(cache, b.subarray(0, HEADER + Math.floor((b.length - HEADER) / 2)));
      },
      why: /rejected by V8/,
    },
    {
      // V8's header: magic, then the hash of the V8 version that made it.
      what: 'from another version of Node (V8)',
      spoil: async (cache) => {
        const b = await readFile(cache);
        b.writeUInt32LE(b.readUInt32LE(HEADER + 4) ^ 0xffff, HEADER + 4);
        await writeFile(cache, b);
      },
      why: /rejected by V8/,
    },
    {
      // Without the checksum the launcher asks V8 for, this one crashes the process in V8's deserializer.
      what: 'corrupt in the middle',
      spoil: async (cache) => {
        const b = await readFile(cache);
        for (let i = HEADER + 4096; i < b.length - 4096; i += 1021) b[i] = (b[i] ?? 0) ^ 0x5a;
        await writeFile(cache, b);
      },
      why: /rejected by V8/,
    },
    { what: 'used under other V8 flags', spoil: async () => undefined, why: /rejected by V8/, flags: ['--no-opt'] },
    { what: 'writable by group', spoil: (cache) => chmod(cache, 0o664), why: /writable by group or others/ },
    { what: 'writable by others', spoil: (cache) => chmod(cache, 0o646), why: /writable by group or others/ },
    {
      what: 'a symlink (to a cache that would do)',
      spoil: async (cache, dir) => {
        await copyFile(cache, join(dir, 'elsewhere'));
        await (await import('node:fs/promises')).rm(cache);
        await symlink(join(dir, 'elsewhere'), cache);
      },
      why: /cannot open: ELOOP/,
    },
    {
      what: 'a directory',
      spoil: async (cache) => {
        const fs = await import('node:fs/promises');
        await fs.rm(cache);
        await fs.mkdir(cache);
      },
      why: /not a regular file|cannot open/,
    },
  ];
  for (const s of spoilt) {
    test(`a cache ${s.what} is not used, and the CLI works without it`, async () => {
      await withTempDir(async (dir) => {
        const { launcher, cache } = await copyDist(dir);
        await s.spoil(cache, dir);
        const r = await assertRuns(dir, launcher, s.flags);
        assert.match(r.cache, /^not used: /);
        assert.match(r.cache, s.why);
      });
    });
  }

  test('a cache owned by another user is not used', { skip: process.getuid?.() !== 0 && 'needs root to chown' }, async () => {
    await withTempDir(async (dir) => {
      const { launcher, cache } = await copyDist(dir);
      await (await import('node:fs/promises')).chown(cache, 65534, 65534);
      const r = await assertRuns(dir, launcher);
      assert.match(r.cache, /^not used: owned by uid 65534/);
    });
  });

  test('BACKPLANE_CODE_CACHE=off compiles from source', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'empty.yaml');
      await writeFile(graph, 'resources: []\n');
      const r = spawnSync(process.execPath, [BIN, 'run', '--file', graph, '--converged-timeout', '0', '--no-api', '--state-dir', join(dir, 'state')], {
        encoding: 'utf8',
        env: { ...process.env, BACKPLANE_CODE_CACHE: 'off' },
      });
      assert.equal(r.status, 0, r.stderr);
      assert.doesNotMatch(r.stderr, /code cache/);
    });
  });

  test('the CLI never writes a cache: not when it has none, not when V8 rejects it, not when it uses it', async () => {
    await withTempDir(async (dir) => {
      const { launcher, cache } = await copyDist(dir);
      const good = await readFile(cache);
      const before = await stat(cache);
      await assertRuns(dir, launcher);
      assert.deepEqual(await readFile(cache), good);
      assert.equal((await stat(cache)).mtimeMs, before.mtimeMs);

      // Rejected (other flags): V8 would happily produce a fresh one; nothing may write it.
      await assertRuns(dir, launcher, ['--no-opt']);
      assert.deepEqual(await readFile(cache), good);

      await (await import('node:fs/promises')).rm(cache);
      await assertRuns(dir, launcher);
      await assert.rejects(stat(cache), { code: 'ENOENT' }, 'a start without a cache left one behind');
    });
  });

  test('no start opens anything in dist/ for writing (strace)', { skip: !haveStrace && 'strace is not installed' }, async () => {
    await withTempDir(async (dir) => {
      const { launcher } = await copyDist(dir);
      const graph = join(dir, 'empty.yaml');
      await writeFile(graph, 'resources: []\n');
      const trace = join(dir, 'trace');
      const r = spawnSync(
        'strace',
        ['-f', '-qq', '-e', 'trace=open,openat,creat,rename,renameat,renameat2,link,linkat', '-o', trace, process.execPath, '--no-opt', launcher, 'run', '--file', graph, '--converged-timeout', '0', '--no-api', '--state-dir', join(dir, 'state')],
        { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } },
      );
      assert.equal(r.status, 0, r.stderr);
      const calls = (await readFile(trace, 'utf8')).split('\n').filter((l) => l.includes(dir) && !l.includes(join(dir, 'state')));
      const opened = calls.filter((l) => /backplane[^"]*"/.test(l));
      assert.ok(opened.some((l) => l.includes('backplane-cli.cache')), `the launcher did not even open the cache:\n${calls.join('\n')}`);
      // A run of a local graph needs only the core script: the rest of the CLI is not even opened.
      assert.deepEqual(opened.filter((l) => /backplane-cli-(more|lazy|kinds|zod|jsyaml)/.test(l)), [], 'a run of a local graph read the rest of the CLI');
      const writes = calls.filter((l) => /O_WRONLY|O_RDWR|O_CREAT|creat\(|rename|link/.test(l));
      assert.deepEqual(writes, [], `a start wrote beside the bundle:\n${writes.join('\n')}`);
    });
  });

  test("the launcher resolves a package as an ES module import would (it is CommonJS; the bundle asks for tsx's esm/api)", () => {
    const req = createRequire(join(DIST, 'backplane-cli.js'));
    for (const specifier of ['tsx/esm/api', 'tsx', 'zod', 'yaml', 'commander', 'etcd3', 'pino', 'liquidjs', 'node:fs', 'fs']) {
      assert.equal(resolveImport(specifier, req), import.meta.resolve(specifier), specifier);
    }
    assert.throws(() => resolveImport('no-such-package-here', req), { code: 'MODULE_NOT_FOUND' });
  });
});

/**
 * The CLI is two scripts (scripts/build.mjs): the core, all that `backplane run` of a local graph needs, and the rest
 * (cluster, scheduler, API, operator commands), read and compiled with its own cache only when first needed. A run
 * that joins no cluster must not pay for the rest; one that does must still work, from the rest's cache, and only
 * with the rest of its own build.
 */
describe('start-up: the rest of the CLI is loaded on demand', () => {
  /** A one-shot run of a graph with a `kv` resource: it opens the embedded cluster store, so it needs the rest. */
  const runCluster = async (dir: string, launcher: string): Promise<Started> => {
    const graph = join(dir, 'kv.yaml');
    await writeFile(graph, 'resources:\n  - { kind: kv, name: greeting, value: hello }\n');
    return start(launcher, ['run', '--file', graph, '--converged-timeout', '0', '--no-api', '--state-dir', join(dir, 'state')]);
  };
  const cacheOf = (script: string, r: Started): string => new RegExp(`^backplane: code cache of ${script.replace('.', '\\.')} (.*)$`, 'm').exec(r.stderr)?.[1] ?? '(not loaded)';
  const moreCache = (r: Started): string => cacheOf('backplane-cli-more.js', r);

  test('the build made the rest for this very core, and its cache for it', async () => {
    ensureBuilt();
    const core = await readFile(join(DIST, 'backplane-cli.js'), 'latin1');
    const more = await readFile(join(DIST, 'backplane-cli-more.js'), 'latin1');
    const id = /\n\/\/# backplane-build=([0-9a-f]{64})\n$/.exec(more)?.[1];
    assert.ok(id !== undefined, 'the rest does not end with its build id');
    assert.ok(core.includes(`"backplane-cli-more.js":"${id}"`), 'the core does not name the rest with its build id');
    const lazyId = /\n\/\/# backplane-build=([0-9a-f]{64})\n$/.exec(await readFile(join(DIST, 'backplane-cli-lazy.js'), 'latin1'))?.[1];
    assert.ok(lazyId !== undefined && core.includes(`"backplane-cli-lazy.js":"${lazyId}"`), 'the core does not name the lazy packages\' script with its build id');
    assert.ok(isAscii(Buffer.from(more, 'latin1')));
    const cache = await readFile(join(DIST, 'backplane-cli-more.cache'));
    assert.equal(cache.toString('latin1', 0, HEADER).trimEnd(), `backplane-code-cache ${id}`);
    // What the split is for: the cluster's, scheduler's and API's code is not in what every run reads.
    assert.ok(core.length < more.length * 2, `the core is ${core.length} bytes, the rest only ${more.length}`);
    for (const name of ['ClusterLink=class', 'Controller=class', 'EmbeddedStore=class']) {
      assert.ok(!core.includes(name), `${name} is in the core script`);
      assert.ok(more.includes(name), `${name} is not in the rest`);
    }
  });

  test('a run of a local graph works with the core alone; one that opens the cluster store says what is missing', async () => {
    await withTempDir(async (dir) => {
      const { launcher } = await copyDist(dir, CORE);
      assert.equal((await assertRuns(dir, launcher)).cache, 'used');
      const r = await runCluster(dir, launcher);
      assert.notEqual(r.code, 0, 'a cluster run worked without the rest of the CLI');
      assert.match(r.stderr, /ENOENT.*backplane-cli-more\.js/);
    });
  });

  test('`validate` and `graph` of a local graph work with the core alone, as `run` does, and still say what is wrong and where', async () => {
    await withTempDir(async (dir) => {
      const { launcher } = await copyDist(dir, CORE);
      const good = join(dir, 'good.yaml');
      await writeFile(good, `resources:\n  - { kind: file, name: ${join(dir, 'f')}, content: "x" }\n`);
      const ok = start(launcher, ['validate', good]);
      assert.equal(ok.code, 0, ok.stderr);
      assert.match(ok.stdout, /^ok: 1 resources, 0 edges$/m);
      assert.equal(ok.cache, 'used');
      const dot = start(launcher, ['graph', good]);
      assert.equal(dot.code, 0, dot.stderr);
      assert.match(dot.stdout, /^digraph backplane \{/);
    });
    // A mistake's position comes from the precise YAML parser's script; the rest of the CLI is still not read.
    await withTempDir(async (dir) => {
      const { launcher } = await copyDist(dir);
      const bad = join(dir, 'bad.yaml');
      await writeFile(bad, `resources:\n  - { kind: file, name: ${join(dir, 'f')}, content: "x" }\n  - { kind: fiel, name: /tmp/x }\n`);
      const no = start(launcher, ['validate', bad]);
      assert.equal(no.code, 2, no.stderr);
      assert.match(no.stderr, /bad\.yaml:3:\d+: unknown resource kind "fiel"/);
      assert.equal(moreCache(no), '(not loaded)');
    });
  });

  test('a run that opens the cluster store loads the rest, from its cache', async () => {
    await withTempDir(async (dir) => {
      const { launcher } = await copyDist(dir);
      const r = await runCluster(dir, launcher);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /kv\[greeting\]: set/);
      assert.equal(r.cache, 'used');
      assert.equal(moreCache(r), 'used');
      // And an operator command (the rest holds them all).
      const v = start(launcher, ['hosts', '--help']);
      assert.equal(v.code, 0, v.stderr);
      assert.equal(moreCache(v), 'used');
    });
  });

  test('the precise YAML parser is a script of its own: an unquoted mode and a syntax error still get it, a quoted mode does not need it', async () => {
    await withTempDir(async (dir) => {
      const { launcher } = await copyDist(dir);
      const runGraph = async (name: string, text: string): Promise<Started> => {
        await writeFile(join(dir, name), text);
        return start(launcher, ['run', '--file', join(dir, name), '--converged-timeout', '0', '--no-api', '--state-dir', join(dir, 'state')]);
      };
      const quoted = await runGraph('quoted.yaml', `resources:\n  - { kind: file, name: ${join(dir, 'q')}, content: "x", mode: "0640" }\n`);
      assert.equal(quoted.code, 0, quoted.stderr);
      assert.equal(cacheOf('backplane-cli-lazy.js', quoted), '(not loaded)');
      assert.equal(moreCache(quoted), '(not loaded)');
      // YAML 1.2 reads 0640 as the decimal 640: only the precise parser has the text chmod means.
      const unquoted = await runGraph('unquoted.yaml', `resources:\n  - { kind: file, name: ${join(dir, 'u')}, content: "x", mode: 0640 }\n`);
      assert.equal(unquoted.code, 0, unquoted.stderr);
      assert.equal(cacheOf('backplane-cli-lazy.js', unquoted), 'used');
      assert.equal(moreCache(unquoted), '(not loaded)', 'the precise parser is a script of its own, not the whole rest of the CLI');
      assert.equal((await stat(join(dir, 'u'))).mode & 0o777, 0o640);
      const broken = await runGraph('broken.yaml', 'resources:\n  - { kind: file, name: /x, content: "x"\n');
      assert.notEqual(broken.code, 0);
      assert.match(broken.stderr, /broken\.yaml:\d+:\d+: invalid YAML/);
      assert.equal(cacheOf('backplane-cli-lazy.js', broken), 'used');
    });
  });

  test('the resource kinds are loaded as a graph names them: the core holds only `file`, an empty or file-only run reads no other kind, nor zod', async () => {
    ensureBuilt();
    // Which modules each script holds, from its source map: a registry that imported every kind statically again
    // would put them all back in the core.
    const sources = async (script: string): Promise<string[]> => (JSON.parse(await readFile(join(DIST, `${script}.map`), 'utf8')) as { sources: string[] }).sources;
    const core = await sources('backplane-cli.js');
    const kinds = await sources('backplane-cli-kinds.js');
    for (const name of builtinKindNames.filter((k) => k !== 'file')) {
      assert.ok(!core.includes(`../src/resources/${name}.ts`), `the ${name} kind is in the core script`);
      assert.ok(kinds.includes(`../src/resources/${name}.ts`), `the ${name} kind is not in the kinds' script`);
    }
    for (const part of ['svc/supervisor.ts', 'pkg/apt.ts', 'svc-schema.ts', 'accounts.ts']) assert.ok(!core.includes(`../src/resources/${part}`), `${part} is in the core script`);
    assert.ok(core.includes('../src/resources/file.ts'), 'the file kind, which nearly every graph uses, left the core');

    await withTempDir(async (dir) => {
      const { launcher } = await copyDist(dir);
      const runGraph = async (name: string, text: string): Promise<Started> => {
        await writeFile(join(dir, name), text);
        return start(launcher, ['run', '--file', join(dir, name), '--converged-timeout', '0', '--no-api', '--state-dir', join(dir, 'state'), '--log-level', 'debug']);
      };
      const empty = await runGraph('empty.yaml', 'resources: []\n');
      assert.equal(empty.code, 0, empty.stderr);
      assert.equal(cacheOf('backplane-cli-kinds.js', empty), '(not loaded)');
      // Nor zod: a kind builds its schema at first use, the file kind skips it for the usual shapes, and the default
      // meta is known without it.
      assert.equal(cacheOf('backplane-cli-zod.js', empty), '(not loaded)');
      // Nor js-yaml: nothing in it is typed, and the fast reader reads it.
      assert.equal(cacheOf('backplane-cli-jsyaml.js', empty), '(not loaded)');
      // Big enough for the validated-graph cache (4 KiB), so the second run builds nothing and still needs its kinds.
      const files = Array.from({ length: 60 }, (_, i) => `  - { kind: file, name: ${join(dir, `f${i}`)}, content: "${'x'.repeat(40)}", mode: "0644" }`);
      for (const run of ['parsed', 'from the graph cache']) {
        const fileOnly = await runGraph('files.yaml', `resources:\n${files.join('\n')}\n`);
        assert.equal(fileOnly.code, 0, fileOnly.stderr);
        assert.equal(cacheOf('backplane-cli-kinds.js', fileOnly), '(not loaded)', run);
        assert.equal(cacheOf('backplane-cli-zod.js', fileOnly), '(not loaded)', run);
        // Paths, `file` and quoted strings: no scalar js-yaml would type, so no js-yaml.
        assert.equal(cacheOf('backplane-cli-jsyaml.js', fileOnly), '(not loaded)', run);
      }
      // A declared metaparam is checked against its schema: zod is loaded then, from its cache.
      const withMeta = await runGraph('meta.yaml', `resources:\n  - { kind: file, name: ${join(dir, 'm')}, content: "x", mode: "0644", meta: { retry: 2 } }\n`);
      assert.equal(withMeta.code, 0, withMeta.stderr);
      assert.equal(cacheOf('backplane-cli-zod.js', withMeta), 'used');
      // `retry: 2` is a plain decimal, read without js-yaml (fast-yaml.ts plain()); `retry: 0x2` is js-yaml's to type:
      // its script is loaded then, from its cache.
      assert.equal(cacheOf('backplane-cli-jsyaml.js', withMeta), '(not loaded)');
      const withHex = await runGraph('meta-hex.yaml', `resources:\n  - { kind: file, name: ${join(dir, 'm')}, content: "x", mode: "0644", meta: { retry: 0x2 } }\n`);
      assert.equal(withHex.code, 0, withHex.stderr);
      assert.equal(cacheOf('backplane-cli-jsyaml.js', withHex), 'used');
      // A template of text and names only renders without liquidjs (template.ts, plain templates).
      const plain = await runGraph('plain.yaml', `resources:\n  - { kind: template, name: ${join(dir, 'p')}, template: "port {{ vars.port }}", vars: { port: 80 } }\n`);
      assert.equal(plain.code, 0, plain.stderr);
      assert.equal(cacheOf('backplane-cli-liquid.js', plain), '(not loaded)');
      // Any other template loads liquidjs from its own script and cache, not from node_modules compiled from source.
      const template = await runGraph('template.yaml', `resources:\n  - { kind: template, name: ${join(dir, 't')}, template: "port {{ vars.port | plus: 1 }}", vars: { port: 80 } }\n`);
      assert.equal(template.code, 0, template.stderr);
      assert.equal(cacheOf('backplane-cli-liquid.js', template), 'used');
      // Trained on a template (scripts/train-code-cache.mjs): the cache holds the code of the functions a render
      // runs, not only the top level (7 KB of 115; ~9 ms of a run with a template compiled them at every run).
      const liquidCache = (await stat(join(DIST, 'backplane-cli-liquid.cache'))).size;
      assert.ok(liquidCache > (await stat(join(DIST, 'backplane-cli-liquid.js'))).size / 2, `liquidjs's cache is ${liquidCache} bytes: the training run rendered no template`);
      assert.equal(await readFile(join(dir, 't'), 'utf8'), 'port 81');
      assert.equal(await readFile(join(dir, 'p'), 'utf8'), 'port 80');
      // Nor zod for the usual shapes of pkg, template and svc (the bench's nginx stack): their quickParams answer.
      assert.equal(cacheOf('backplane-cli-zod.js', template), '(not loaded)');
      const stack = (svcExtra: string): string =>
        'resources:\n  - { kind: pkg, name: coreutils }\n' +
        `  - { kind: template, name: ${join(dir, 'n.conf')}, mode: "0644", vars: { port: 80 }, template: "listen {{ vars.port }}", require: ["pkg[coreutils]"], notify: ["svc[web]"] }\n` +
        `  - { kind: svc, name: web, cmd: [/bin/sleep, "100"], reload: { signal: SIGHUP }, stopSignal: SIGQUIT, onAgentExit: keep, health: { http: "http://127.0.0.1:9/" }${svcExtra} }\n`;
      for (const [extra, zod] of [
        ['', '(not loaded)'],
        // A fence is left to the schema: zod is loaded then.
        [`, fence: { heartbeat: ${join(dir, 'hb')}, maxAge: 1s }`, 'used'],
      ] as const) {
        await writeFile(join(dir, 'stack.yaml'), stack(extra));
        // --noop: nothing is installed or started, but the graph is built and every resource checked.
        const r = start(launcher, ['run', '--file', join(dir, 'stack.yaml'), '--noop', '--no-api', '--state-dir', join(dir, 'state'), '--log-level', 'debug']);
        assert.match(r.stderr, /running 3 resources/, r.stderr);
        assert.equal(cacheOf('backplane-cli-zod.js', r), zod, `${extra}: ${r.stderr}`);
      }
      const mixed = `resources:\n${files.join('\n')}\n  - { kind: noop, name: joined }\n  - { kind: print, name: hello, msg: hello }\n`;
      for (const run of ['parsed', 'from the graph cache']) {
        const r = await runGraph('mixed.yaml', mixed);
        assert.equal(r.code, 0, `${run}: ${r.stderr}`);
        assert.equal(cacheOf('backplane-cli-kinds.js', r), 'used', run);
        assert.equal(cacheOf('backplane-cli-liquid.js', r), '(not loaded)', run);
        assert.match(r.stderr, /print\[hello\]/, run);
        assert.equal(/graph cache: \d+ validated resources/.test(r.stderr), run === 'from the graph cache', `${run}: ${r.stderr}`);
      }
      assert.equal(moreCache(empty), '(not loaded)');
      // An unknown kind still names every kind, loaded or not.
      const typo = await runGraph('typo.yaml', 'resources:\n  - { kind: svcc, name: x }\n');
      assert.notEqual(typo.code, 0);
      assert.match(typo.stderr, /did you mean "svc"\? known kinds: exec, file, group, hostname, http, kv, msg, noop, pkg, print, svc, tcp, template, timer, user/);
    });
  });

  test('the rest of another build is refused, not run beside this core', async () => {
    await withTempDir(async (dir) => {
      const { launcher } = await copyDist(dir);
      const more = join(dir, 'backplane-cli-more.js');
      const text = await readFile(more, 'latin1');
      await writeFile(more, text.replace(/backplane-build=([0-9a-f])/, (_m, c: string) => `backplane-build=${c === '0' ? '1' : '0'}`), 'latin1');
      assert.equal((await assertRuns(dir, launcher)).code, 0, 'a run of a local graph does not even read the rest');
      const r = await runCluster(dir, launcher);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /backplane-cli-more\.js is not of this build/);
    });
  });

  for (const s of [
    { what: 'writable by group', spoil: (cache: string) => chmod(cache, 0o664), why: /writable by group or others/ },
    {
      what: 'made for another build',
      spoil: async (cache: string) => {
        const b = await readFile(cache);
        b.write('0'.repeat(64), 'backplane-code-cache '.length, 'latin1');
        await writeFile(cache, b);
      },
      why: /another build/,
    },
    { what: 'missing', spoil: async (cache: string) => (await import('node:fs/promises')).rm(cache), why: /cannot open: ENOENT/ },
  ]) {
    test(`a cache of the rest ${s.what} is not used, and a cluster run works without it`, async () => {
      await withTempDir(async (dir) => {
        const { launcher } = await copyDist(dir);
        await s.spoil(join(dir, 'backplane-cli-more.cache'));
        const r = await runCluster(dir, launcher);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.cache, 'used');
        assert.match(moreCache(r), /^not used: /);
        assert.match(moreCache(r), s.why);
      });
    });
  }
});
