// The CLI is two bundled scripts, each with a V8 code cache made here: start-up is paid on every cron-style run, and
// Node 20 otherwise parses and compiles the whole bundle on every start (src/cli/launcher.ts explains the trust rules).
//
//   dist/backplane.cjs            the launcher (bin/backplane.js requires it): compiles the CLI's scripts with their caches
//   dist/backplane.mjs            the same, for an ES module import
//   dist/backplane-cli.js         the CLI's core, what `backplane run` of a local graph needs: a classic script (a function
//                                 the launcher calls), ASCII, build id at its end
//   dist/backplane-cli-more.js    the rest of the CLI (cluster, scheduler, API, operator commands), loaded on first use
//   dist/backplane-cli*.cache     their code caches, made by a training run (scripts/train-code-cache.mjs)
//   dist/*.mjs, dist/chunks/      worker threads' and backplane members' entries: ES modules, as before
//   dist/web/                     the dashboard
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { createRequire, isBuiltin } from 'node:module';
import { pathToFileURL } from 'node:url';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join, relative, resolve as resolvePath, sep } from 'node:path';

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

// Every module of the CLI, scope-hoisted into functions: (exports, require, module, __filename, __dirname, url, resolve,
// importModule, load, expose) => void. Classic scripts because V8 code caches exist only for scripts in Node 20;
// functions so the launcher hands them what an ES module had (import.meta.url, import.meta.resolve, import()).
//
// Two scripts, not one: dist/backplane-cli.js holds what `backplane run` of a local graph needs (every module that
// main.ts and run.ts import statically, and what those import), dist/backplane-cli-more.js everything else: the
// cluster link, stores and trust, the scheduler and controller, the API server and its ops, the backplanes, the
// operator commands. A run that joins no cluster reads, holds and compiles only the first (on this machine every
// first-touched page is ~20 us: the whole 1.7 MB bundle and its cache were ~1,400 page faults of every start). The
// second is loaded, with its own code cache, the first time the CLI reaches one of its modules (an import() that
// esbuild turned into require(): the cluster store opening, the API socket, another command).
//
// Each module is in exactly one script, so a class, a registry or a cache is never duplicated: where a module of one
// script imports a module of the other, the import is a stand-in, `module.exports = __bpLoad(key)`, and the other
// script's entry `__bpExpose`s a getter of that module (the launcher keeps the table; src/cli/launcher.ts). The core
// names the further script with its build id, so a core never runs beside another build's second script.
const SCRIPT_BANNER = '(function (exports, require, module, __filename, __dirname, __bpUrl, __bpResolve, __bpImport, __bpLoad, __bpExpose) {';
const MORE = 'backplane-cli-more.js';
/** The modules `backplane run` starts from: main.ts runs it, run.ts is the command, perf-shim is injected everywhere. */
const CORE_ROOTS = ['src/cli/main.ts', 'src/cli/run.ts', 'src/util/perf-shim.ts'];
/**
 * Packages the core imports statically but calls only now and then: they go to the rest of the CLI, and the core's
 * stand-in for them is a module of getters (as for Node's built-ins above) that loads the rest at the first read of
 * an export. `yaml` (165 KB, a sixth of the core) gives the YAML frontend positions for error messages and the text of
 * an unquoted numeric mode (src/frontends/document.ts); js-yaml reads the data. A package whose exports the core
 * reads while its modules load would load the rest at every start: test/cli/startup.test.ts would catch that.
 */
const LAZY_PACKAGES = ['yaml'];
const isLazy = (file) => LAZY_PACKAGES.some((p) => moduleKey(file).startsWith(`node_modules/${p}/`));
const cliPlugins = [
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
];
function cliOptions(extra) {
  return {
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
    // A script that came out of a code cache cannot run import() in Node 20 (the callback is lost): every import() in
    // the bundle becomes require() of a bundled module or of a CommonJS package, and the one import of a module outside
    // the bundle (src/util/import-module.ts) calls the launcher's own import().
    supported: { 'dynamic-import': false },
    footer: { js: '})' },
    ...extra,
  };
}

/** A module's key in both scripts: its path from the repository, node_modules/... for a package (wherever it is installed). */
const moduleKey = (file) => {
  const at = file.indexOf('node_modules/');
  return at >= 0 ? file.slice(at) : file;
};

// First the whole CLI as one bundle, as before, only to learn its module graph (and to check it).
const whole = await build(cliOptions({ entryPoints: ['src/cli/main.ts'], outfile: 'dist/backplane-cli.js', sourcemap: false, legalComments: 'none', inject: ['src/util/perf-shim.ts'], plugins: cliPlugins }));
if (whole.warnings.length > 0) throw new Error(`the CLI bundle built with ${whole.warnings.length} warning(s): fix them (an import.meta or import() the bundle cannot keep, most likely)`);
for (const [file, input] of Object.entries(whole.metafile.inputs)) {
  if (file.startsWith('src/') && /\blocales\.(?!en\b)/.test(await readFile(file, 'utf8'))) throw new Error(`${file} uses a zod locale other than en, which the CLI bundle leaves out (zod-locales-en above)`);
  for (const imp of input.imports) {
    // import('pkg') of an external package would become require('pkg'): wrong for a package that is an ES module.
    // Node's built-in modules are what require() gives either way.
    if (imp.kind === 'dynamic-import' && imp.external === true && !isBuiltin(imp.path)) throw new Error(`${file}: import('${imp.path}') of a module outside the CLI bundle: use importModule (src/util/import-module.ts)`);
  }
}
// The core: what the roots import statically, and what that imports. import() is where the core may end.
const inputs = whole.metafile.inputs;
const core = new Set();
for (const queue = [...CORE_ROOTS]; queue.length > 0; ) {
  const file = queue.pop();
  if (core.has(file)) continue;
  if (inputs[file] === undefined) throw new Error(`${file}: not a module of the CLI bundle (CORE_ROOTS in scripts/build.mjs)`);
  core.add(file);
  for (const imp of inputs[file].imports) if (!imp.external && imp.kind !== 'dynamic-import' && (isLazy(file) || !isLazy(imp.path))) queue.push(imp.path);
}
// Real files only: a plugin's module (lazy-builtin:net, zod-locales-en:...) is bundled into each script that uses it.
const isFile = (f) => !f.includes(':');
const coreKeys = new Set([...core].filter(isFile).map(moduleKey));
const moreKeys = new Set(Object.keys(inputs).filter((f) => isFile(f) && !core.has(f)).map(moduleKey));

/**
 * Resolves as the bundle would, then turns an import of a module that lives in the other script into its stand-in.
 * Only real files cross: the plugins' own modules (a lazy built-in's getters, zod's en locale) hold no state, and a
 * script that needs one has its own copy. `crossed` collects the keys this script asks the other for.
 */
function crossScript(foreign, crossed, lazy = new Map()) {
  return {
    name: 'cross-script',
    setup(b) {
      b.onResolve({ filter: /.*/ }, async (a) => {
        if (a.pluginData?.crossScript === true || a.kind === 'entry-point') return undefined;
        const r = await b.resolve(a.path, { kind: a.kind, importer: a.importer, namespace: a.namespace, resolveDir: a.resolveDir, pluginData: { crossScript: true } });
        if (r.errors.length > 0 || r.external || r.namespace !== 'file') return undefined;
        const key = moduleKey(relative(process.cwd(), r.path).split(sep).join('/'));
        if (!foreign.has(key)) return undefined;
        crossed.add(key);
        // A stand-in is CommonJS whatever the module is: `.cjs` keeps esbuild from reading a `.mjs` key as ESM.
        return { path: `${key}.cjs`, namespace: 'cross-script', pluginData: { key } };
      });
      b.onLoad({ filter: /.*/, namespace: 'cross-script' }, (a) => {
        const key = JSON.stringify(a.pluginData.key);
        const names = lazy.get(a.pluginData.key);
        if (names === undefined) return { contents: `module.exports = __bpLoad(${key});`, loader: 'js' };
        // Getters on the prototype, for the reason lazyBuiltins gives.
        return {
          contents: [
            'let real;',
            `const load = () => (real ??= __bpLoad(${key}));`,
            'const getters = {};',
            `for (const k of ${JSON.stringify(names)}) Object.defineProperty(getters, k, { enumerable: true, get: () => load()[k] });`,
            'module.exports = Object.create(getters);',
          ].join('\n'),
          loader: 'js',
        };
      });
    },
  };
}
/** An entry that registers the getters of `keys` (modules of this script the other one asks for), then runs `main`. */
function entryOf(keys, scripts, main) {
  const absolute = new Map(Object.keys(inputs).map((f) => [moduleKey(f), resolvePath(f)]));
  const getters = [...keys].sort().map((k) => `  ${JSON.stringify(k)}: () => require(${JSON.stringify(absolute.get(k))}),`);
  if (getters.length !== keys.size) throw new Error('a module asked for across scripts is not in the CLI bundle');
  return {
    contents: `__bpExpose({\n${getters.join('\n')}\n}, ${JSON.stringify(scripts)});\n${main === undefined ? '' : `require(${JSON.stringify(resolvePath(main))});\n`}`,
    resolveDir: process.cwd(),
    sourcefile: 'backplane-cli-entry.js',
    loader: 'js',
  };
}
/** Makes a built script ASCII, ends it with its build id, writes it and what esbuild wrote beside it; returns the id. */
async function writeScript(result, outfile) {
  let id;
  for (const out of result.outputFiles) {
    if (!out.path.endsWith('.js')) {
      await writeFile(out.path, out.contents);
      continue;
    }
    // ASCII, so the launcher reads it as a one-byte string without decoding. esbuild escapes strings; what is left is
    // in regular expression literals, where \uXXXX means the same character.
    const text = out.text.replace(/[^\x00-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
    id = createHash('sha256').update(text).digest('hex');
    await writeFile(out.path, `${text}\n//# backplane-build=${id}\n`);
  }
  if (id === undefined) throw new Error(`no ${outfile} came out of the build`);
  return id;
}
/** Every file module a build bundled must be its script's own (a module in both scripts would be two modules). */
function checkOwn(result, own, name) {
  for (const file of Object.keys(result.metafile.inputs)) {
    if (file.includes(':')) continue; // the plugins' stateless modules (lazy-builtin:, zod-locales-en:, cross-script:)
    if (file === 'backplane-cli-entry.js') continue;
    if (!own.has(moduleKey(file))) throw new Error(`${file} was bundled into ${name}, but belongs to the other CLI script`);
  }
}

// The further script first: the core pins its build id. Its modules see the core's monotonic clock (the injected
// perf-shim), not a copy with another origin.
const moreAsks = new Set(['src/util/perf-shim.ts']);
const coreAsksFor = new Set();
for (const [file, input] of Object.entries(inputs)) {
  if (!core.has(file)) continue;
  for (const imp of input.imports) if (!imp.external && moreKeys.has(moduleKey(imp.path))) coreAsksFor.add(moduleKey(imp.path));
}
const more = await build(
  cliOptions({
    stdin: entryOf(coreAsksFor, {}),
    outfile: `dist/${MORE}`,
    define: { 'import.meta.url': '__bpUrl', 'import.meta.resolve': '__bpResolve', performance: '__bpPerformance' },
    banner: { js: `${SCRIPT_BANNER}var __bpPerformance = __bpLoad("src/util/perf-shim.ts").performance;` },
    plugins: [crossScript(coreKeys, moreAsks), ...cliPlugins],
  }),
);
if (more.warnings.length > 0) throw new Error(`${MORE} built with ${more.warnings.length} warning(s)`);
checkOwn(more, moreKeys, MORE);
const moreId = await writeScript(more, MORE);

// The exports of each lazy package module the core imports, from the module itself (this Node loads it as the bundle's
// require() would: the bundle has the same file).
const lazyExports = new Map();
for (const key of coreAsksFor) {
  if (!isLazy(key)) continue;
  const file = Object.keys(inputs).find((f) => moduleKey(f) === key);
  let names;
  try {
    names = Object.keys(createRequire(import.meta.url)(resolvePath(file)));
  } catch {
    names = Object.keys(await import(pathToFileURL(resolvePath(file)).href));
  }
  lazyExports.set(key, names.filter((k) => k !== 'default' && k !== '__esModule'));
}
const coreAsked = new Set();
const cli = await build(
  cliOptions({
    stdin: entryOf(moreAsks, { [MORE]: moreId }, 'src/cli/main.ts'),
    outfile: 'dist/backplane-cli.js',
    inject: ['src/util/perf-shim.ts'],
    banner: { js: SCRIPT_BANNER },
    plugins: [crossScript(moreKeys, coreAsked, lazyExports), ...cliPlugins],
  }),
);
if (cli.warnings.length > 0) throw new Error(`the CLI bundle built with ${cli.warnings.length} warning(s)`);
checkOwn(cli, coreKeys, 'backplane-cli.js');
for (const k of coreAsked) if (!coreAsksFor.has(k)) throw new Error(`backplane-cli.js asks ${MORE} for ${k}, which it does not expose`);
const coreId = await writeScript(cli, 'backplane-cli.js');

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

// The caches: the CLI run once on a small graph of files through the launcher just built, then V8's code for every
// function that ran, one cache per script (scripts/train-code-cache.mjs).
const train = spawnSync(process.execPath, ['scripts/train-code-cache.mjs', 'dist/backplane.cjs', `dist/backplane-cli.js=${coreId}`, `dist/${MORE}=${moreId}`], {
  // Only V8 flags the agent itself starts with: a cache made under other flags would be rejected at every start.
  env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'NODE_OPTIONS')),
  stdio: ['ignore', 'pipe', 'pipe'],
  encoding: 'utf8',
});
// No cache is a slow start, not a broken CLI (the launcher compiles from source): the build goes on, loudly, and
// test/cli/startup.test.ts fails until the training run passes again.
if (train.status !== 0) console.warn(`WARNING: no code cache, the CLI will start slowly: its training run failed (exit ${train.status ?? train.signal}):\n${train.stdout}${train.stderr}`);

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
