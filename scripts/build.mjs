// The CLI is one bundled script with a V8 code cache made here: start-up is paid on every cron-style run, and Node
// 20 otherwise parses and compiles the whole bundle on every start (src/cli/launcher.ts explains the trust rules).
//
//   dist/backplane.cjs         the launcher (bin/backplane.js requires it): compiles the bundle with its cache
//   dist/backplane.mjs         the same, for an ES module import
//   dist/backplane-cli.js      the CLI: one classic script (a function the launcher calls), ASCII, build id at its end
//   dist/backplane-cli.cache   its code cache, made by a training run (scripts/train-code-cache.mjs)
//   dist/*.mjs, dist/chunks/   worker threads' and backplane members' entries: ES modules, as before
//   dist/web/                  the dashboard
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { isBuiltin } from 'node:module';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';

/**
 * Node's built-in modules that a run rarely touches are loaded at their first use, not at every start: child_process
 * (required at the top of commander, and by the exec and svc kinds), crypto, worker_threads, perf_hooks, readline and
 * v8 were ~25 ms of a 1,000-file run's start-up on a quiet machine, most of it for runs that never call them. Each
 * becomes a module of getters, one per export this Node has (listed here, at build time, from the same binary the
 * code cache is made for), that requires the real module on the first read: named imports, namespace imports and
 * require() all see the same functions and classes, only later. net joined them on 2026-12-02 (22:00): only the svc
 * health check, tcp and the API's clients connect, and it was 1.5 ms and ~50 page faults of every start.
 *
 * The getters sit on the module's prototype, not on the module: esbuild's interop (__toESM) gives every importing
 * module its own copy of a CommonJS module's own properties, a getter closure per export, and crypto alone has 19
 * importers (~1,900 closures and 200 KB of every start, all young objects the first scavenges had to copy). Its copy
 * starts from the same prototype, so with no own properties there is nothing to copy and every read still finds
 * the getter. Object.keys() of such a module is empty; nothing in the CLI lists a built-in module's exports.
 */
function lazyBuiltins(names) {
  const filter = new RegExp(`^(node:)?(${names.join('|')})$`);
  return {
    name: 'lazy-builtins',
    setup(b) {
      b.onResolve({ filter }, (a) =>
        a.namespace === 'lazy-builtin' ? { path: `node:${a.path.replace(/^node:/, '')}`, external: true } : { path: a.path.replace(/^node:/, ''), namespace: 'lazy-builtin' },
      );
      b.onLoad({ filter: /.*/, namespace: 'lazy-builtin' }, async (a) => {
        const keys = Object.keys(await import(`node:${a.path}`)).filter((k) => k !== 'default');
        return {
          loader: 'js',
          contents: [
            'let real;',
            `const load = () => (real ??= require(${JSON.stringify(`node:${a.path}`)}));`,
            'const getters = {};',
            `for (const k of ${JSON.stringify(keys)}) Object.defineProperty(getters, k, { enumerable: true, get: () => load()[k] });`,
            'module.exports = Object.create(getters);',
          ].join('\n'),
        };
      });
    },
  };
}

await rm('dist', { recursive: true, force: true });
await mkdir('dist');

// Every module of the CLI, scope-hoisted into one function: (exports, require, module, __filename, __dirname, url,
// resolve, importModule) => void. A classic script because V8 code caches exist only for scripts in Node 20; a
// function so the launcher hands it what an ES module had (import.meta.url, import.meta.resolve, import()).
const cli = await build({
  entryPoints: ['src/cli/main.ts'],
  outfile: 'dist/backplane-cli.js',
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  // Half the bytes to read, hold and hash; names are kept (stack traces stay readable), and the source map is beside.
  minifyWhitespace: true,
  minifySyntax: true,
  legalComments: 'external',
  sourcemap: 'linked',
  logLevel: 'warning',
  write: false,
  metafile: true,
  // tsx registers its own loader by file URL, so it must stay a real package, loaded only for TypeScript graphs.
  // etcd3 loads its .proto files at run time relative to its own __dirname, which a bundle does not have.
  external: ['tsx', 'tsx/*', 'etcd3'],
  define: { 'import.meta.url': '__bpUrl', 'import.meta.resolve': '__bpResolve' },
  // The global `performance` is a monotonic clock here, without Node's perf_hooks modules (src/util/perf-shim.ts).
  inject: ['src/util/perf-shim.ts'],
  // A script that came out of a code cache cannot run import() in Node 20 (the callback is lost): every import() in
  // the bundle becomes require() of a bundled module or of a CommonJS package, and the one import of a module outside
  // the bundle (src/util/import-module.ts) calls the launcher's own import().
  supported: { 'dynamic-import': false },
  plugins: [
    lazyBuiltins(['child_process', 'crypto', 'worker_threads', 'perf_hooks', 'readline', 'v8', 'net']),
    {
      // zod's namespace export carries its ~50 locales (300 KB, 15% of the bundle, read at every start); Backplane's
      // messages are English and nothing calls z.locales, so only en is kept (checked below).
      name: 'zod-locales-en',
      setup(b) {
        b.onResolve({ filter: /^\.\.\/locales\/index\.js$/ }, (a) => (/[\\/]zod[\\/]v4[\\/]/.test(a.importer) ? { path: join(a.resolveDir, '..', 'locales', 'index.js'), namespace: 'zod-locales-en' } : undefined));
        b.onLoad({ filter: /.*/, namespace: 'zod-locales-en' }, (a) => ({ contents: "export { default as en } from './en.js';", loader: 'js', resolveDir: dirname(a.path) }));
      },
    },
    {
      name: 'launcher-import',
      setup(b) {
        b.onLoad({ filter: /[\\/]src[\\/]util[\\/]import-module\.ts$/ }, () => ({
          contents: 'export function importModule(url) { return __bpImport(url); }',
          loader: 'js',
        }));
      },
    },
  ],
  banner: { js: '(function (exports, require, module, __filename, __dirname, __bpUrl, __bpResolve, __bpImport) {' },
  footer: { js: '})' },
});
if (cli.warnings.length > 0) throw new Error(`the CLI bundle built with ${cli.warnings.length} warning(s): fix them (an import.meta or import() the bundle cannot keep, most likely)`);
for (const [file, input] of Object.entries(cli.metafile.inputs)) {
  if (file.startsWith('src/') && /\blocales\.(?!en\b)/.test(await readFile(file, 'utf8'))) throw new Error(`${file} uses a zod locale other than en, which the CLI bundle leaves out (zod-locales-en above)`);
  for (const imp of input.imports) {
    // import('pkg') of an external package would become require('pkg'): wrong for a package that is an ES module.
    // Node's built-in modules are what require() gives either way.
    if (imp.kind === 'dynamic-import' && imp.external === true && !isBuiltin(imp.path)) throw new Error(`${file}: import('${imp.path}') of a module outside the CLI bundle: use importModule (src/util/import-module.ts)`);
  }
}
for (const out of cli.outputFiles) {
  if (!out.path.endsWith('.js')) {
    await writeFile(out.path, out.contents);
    continue;
  }
  // ASCII, so the launcher reads it as a one-byte string without decoding. esbuild escapes strings; what is left is
  // in regular expression literals, where \uXXXX means the same character.
  const text = out.text.replace(/[^\x00-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  const id = createHash('sha256').update(text).digest('hex');
  await writeFile(out.path, `${text}\n//# backplane-build=${id}\n`);
  // The cache: the bundle run once on a small graph of files, then V8's code for every function that ran.
  const train = spawnSync(process.execPath, ['scripts/train-code-cache.mjs', out.path, out.path.replace(/\.js$/, '.cache'), id], {
    // Only V8 flags the agent itself starts with: a cache made under other flags would be rejected at every start.
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'NODE_OPTIONS')),
    stdio: ['ignore', 'pipe', 'pipe'],
    encoding: 'utf8',
  });
  // No cache is a slow start, not a broken CLI (the launcher compiles from source): the build goes on, loudly, and
  // test/cli/startup.test.ts fails until the training run passes again.
  if (train.status !== 0) console.warn(`WARNING: no code cache, the CLI will start slowly: its training run failed (exit ${train.status ?? train.signal}):\n${train.stdout}${train.stderr}`);
}

// The launcher is CommonJS, as bin/backplane.js is: Node then starts without its ES module loader. dist/backplane.mjs
// is the same start for whoever imports or runs the ES module entry of earlier builds.
await build({
  entryPoints: ['src/cli/launcher.ts'],
  outfile: 'dist/backplane.cjs',
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  logLevel: 'warning',
  define: { 'import.meta.url': '__launcherUrl' },
  banner: { js: "const __launcherUrl = require('node:url').pathToFileURL(__filename).href;" },
});
await writeFile('dist/backplane.mjs', "// The CLI's launcher is CommonJS (dist/backplane.cjs, scripts/build.mjs).\nimport './backplane.cjs';\n");

await build({
  // The graph module worker is its own entry: a worker thread starts from a file (src/frontends/typescript.ts).
  // Each shipped backplane's member runs as an instance's task: a file of its own (dist/backplanes/<kind>/member.mjs).
  entryPoints: {
    'graph-module-worker': 'src/frontends/module-worker.ts',
    'backplane-react-worker': 'src/backplanes/react-worker.ts',
    'backplanes/redis/member': 'src/backplanes/redis/member.ts',
    'backplanes/postgres/member': 'src/backplanes/postgres/member.ts',
  },
  outdir: 'dist',
  outExtension: { '.js': '.mjs' },
  splitting: true,
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: 'linked',
  logLevel: 'warning',
  external: ['tsx', 'tsx/*', 'etcd3'],
  // Some dependencies are CommonJS and call require(); give them one in the ESM bundle.
  banner: { js: "import { createRequire as __bpCreateRequire } from 'node:module'; const require = __bpCreateRequire(import.meta.url);" },
});

// The web dashboard (web/): a browser bundle, its stylesheet and page, in dist/web/, which the agent's API serves at
// `/` and `/assets/*` (src/api/web-assets.ts). No framework; every module is bundled into one app.js.
await build({
  entryPoints: { app: 'web/app.ts', style: 'web/style.css' },
  outdir: 'dist/web',
  bundle: true,
  platform: 'browser',
  format: 'esm',
  target: ['chrome110', 'firefox110', 'safari16'],
  minify: true,
  logLevel: 'warning',
  tsconfig: 'web/tsconfig.json',
});
await copyFile('web/index.html', 'dist/web/index.html');
await copyFile('web/favicon.svg', 'dist/web/favicon.svg');
