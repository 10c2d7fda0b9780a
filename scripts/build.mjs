// The CLI is several bundled scripts, each with a V8 code cache made here: start-up is paid on every cron-style run, and
// Node 20 otherwise parses and compiles the whole bundle on every start (src/cli/launcher.ts explains the trust rules).
//
//   dist/backplane.cjs            the launcher (bin/backplane.js requires it): compiles the CLI's scripts with their caches
//   dist/backplane.mjs            the same, for an ES module import
//   dist/backplane-cli.js         the CLI's core, what `backplane run` of a local graph needs: a classic script (a function
//                                 the launcher calls), ASCII, build id at its end
//   dist/backplane-cli-more.js    the rest of the CLI (cluster, scheduler, API, operator commands), loaded on first use
//   dist/backplane-cli-kinds.js   the resource kinds but `file`, loaded when a graph first names one
//   dist/backplane-cli-lazy.js    the packages the core calls now and then (LAZY_PACKAGES): yaml, and zod and
//   dist/backplane-cli-zod.js     js-yaml in scripts of their own, each loaded at the first read of one of its
//   dist/backplane-cli-jsyaml.js  exports
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
import { standIn } from './stand-in.mjs';

/**
 * Node's built-in modules that a run rarely touches are loaded at their first use, not at every start: child_process
 * (required at the top of commander, and by the exec and svc kinds), crypto, worker_threads, perf_hooks, readline and
 * v8 were ~25 ms of a 1,000-file run's start-up on a quiet machine, most of it for runs that never call them. Each
 * becomes a module of getters, one per export this Node has (listed here, at build time, from the same binary the
 * code cache is made for), that requires the real module on the first read: named imports, namespace imports and
 * require() all see the same functions and classes, only later. net joined them on 2026-12-02 (22:00): only the svc
 * health check, tcp and the API's clients connect, and it was 1.5 ms and ~50 page faults of every start. fs/promises
 * (~10 more of Node's modules: readline, the fs watchers, fs/dir; 2.7 ms), os and timers/promises joined them on
 * 2026-12-03: an empty run reads its graph with node:fs's callbacks, and needs os only for the host name.
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
        return { loader: 'js', contents: standIn(`require(${JSON.stringify(`node:${a.path}`)})`, keys) };
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
// Five scripts, not one: dist/backplane-cli.js, the core, holds what `backplane run` of a local graph needs (every
// module that main.ts and run.ts import statically, and what those import); dist/backplane-cli-kinds.js the resource
// kinds the registry loads by import() (all but `file`) and what only they import; dist/backplane-cli-more.js
// everything else reached only through import(): the cluster link, stores and trust, the scheduler and controller,
// the API server and its ops, the backplanes, the operator commands; dist/backplane-cli-lazy.js and -zod.js the
// packages of LAZY_PACKAGES below. A
// run that joins no cluster reads, holds and compiles only the core (on this machine every first-touched page is
// ~20 us: the whole 1.7 MB bundle and its 1.1 MB cache were ~1,400 page faults of every start). A further script is
// loaded, with its own code cache, the first time the CLI reaches one of its modules (an import() that esbuild turned
// into require(): the cluster store opening, the API socket, another command).
//
// Each module is in exactly one script, so a class, a registry or a cache is never duplicated: where a module of one
// script imports a module of another, the import is a stand-in, `module.exports = __bpLoad(key, script)`, and that
// script's entry `__bpExpose`s a getter of the module (the launcher keeps the table and runs a script when one of its
// modules is first asked for; src/cli/launcher.ts). The core names the further scripts with their build ids, so a core
// never runs beside another build's.
const SCRIPT_BANNER = '(function (exports, require, module, __filename, __dirname, __bpUrl, __bpResolve, __bpImport, __bpLoad, __bpExpose) {';
const MORE = 'backplane-cli-more.js';
/** The resource kinds but `file`, and what only they import (below): loaded when a graph first names such a kind. */
const KINDS_SCRIPT = 'backplane-cli-kinds.js';
/**
 * The modules `backplane run` starts from: main.ts runs it, run.ts is the command, perf-shim is injected everywhere.
 * validate.ts and graph.ts too: `backplane validate` and `graph` register only themselves (main.ts), and need nothing
 * `run` does not.
 */
const CORE_ROOTS = ['src/cli/main.ts', 'src/cli/run.ts', 'src/cli/validate.ts', 'src/cli/graph.ts', 'src/util/perf-shim.ts'];
/**
 * Packages the core imports statically but calls only now and then: each goes to a script of its own, and the core's
 * stand-in for it is a module of getters (as for Node's built-ins above) that loads that script at the first read of
 * an export. `yaml` (165 KB, a sixth of the core) gives the YAML frontend positions for error messages and the text
 * of an unquoted numeric mode (src/frontends/document.ts); js-yaml reads the data. `zod` (300 KB, ~1,000 page faults
 * of every start with its code cache) checks parameters against a kind's schema, which a kind builds at first use
 * and skips for the usual shapes (quickParams), and metaparams, which a resource seldom declares: a run of an empty
 * graph or of plain files, parsed or from the graph cache, never calls it. `js-yaml` (71 KB, a sixth of the core
 * left) reads what the fast reader declines, and types the plain scalars it reads that may be a null, bool, int or
 * float (src/frontends/fast-yaml.ts): a graph of paths, names and quoted strings (an empty one, the bench's, one
 * from the graph cache) never needs it. `liquidjs` (the template kind's, 190 KB) was required from node_modules at
 * the first template: compiled from source with no code cache, 18 ms of a run with a template (2026-12-03). A package
 * whose exports the core reads while its modules load would load its script at every start:
 * test/cli/startup.test.ts would catch that.
 */
const LAZY_PACKAGES = {
  yaml: 'backplane-cli-lazy.js',
  zod: 'backplane-cli-zod.js',
  'js-yaml': 'backplane-cli-jsyaml.js',
  liquidjs: 'backplane-cli-liquid.js',
};
const LAZY_SCRIPTS = Object.values(LAZY_PACKAGES);
/** The script of the lazy package `file` is in, or undefined. */
const lazyScriptOf = (file) => Object.entries(LAZY_PACKAGES).find(([p]) => moduleKey(file).startsWith(`node_modules/${p}/`))?.[1];
const isLazy = (file) => lazyScriptOf(file) !== undefined;
const cliPlugins = [
  lazyBuiltins(['child_process', 'crypto', 'worker_threads', 'perf_hooks', 'readline', 'v8', 'net', 'fs/promises', 'os', 'timers/promises']),
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
// Which script each module is in. Real files only: a plugin's module (lazy-builtin:net, zod-locales-en:...) holds no
// state and is bundled into each script that uses it.
const CORE = 'backplane-cli.js';
const isFile = (f) => !f.includes(':');
const coreKeys = new Set([...core].filter(isFile).map(moduleKey));
// The resource kinds the core's registry loads on first use (src/resources/registry.ts), and what they import that
// the core does not: a script of their own, so that a graph of files and an exec does not read the cluster and the
// operator commands (MORE), nor an empty graph any kind.
const kinds = new Set();
for (const queue = Object.keys(inputs).filter((f) => f.startsWith('src/resources/') && !core.has(f)); queue.length > 0; ) {
  const file = queue.pop();
  if (kinds.has(file) || core.has(file) || !isFile(file) || isLazy(file)) continue;
  kinds.add(file);
  for (const imp of inputs[file].imports) if (!imp.external && imp.kind !== 'dynamic-import') queue.push(imp.path);
}
const kindKeys = new Set([...kinds].map(moduleKey));
const scriptOf = (key) => (coreKeys.has(key) ? CORE : (lazyScriptOf(key) ?? (kindKeys.has(key) ? KINDS_SCRIPT : MORE)));
const keysOf = new Map([CORE, ...LAZY_SCRIPTS, KINDS_SCRIPT, MORE].map((name) => [name, new Set()]));
for (const f of Object.keys(inputs).filter(isFile)) keysOf.get(scriptOf(moduleKey(f))).add(moduleKey(f));
// What each script must expose: its modules that a module of another script imports. Every further script asks the
// core for its monotonic clock (the injected perf-shim): one origin for every performance.now() of the CLI.
const asked = new Map([...keysOf.keys()].map((name) => [name, new Set()]));
asked.get(CORE).add('src/util/perf-shim.ts');
for (const [file, input] of Object.entries(inputs)) {
  if (!isFile(file)) continue;
  for (const imp of input.imports) {
    if (imp.external || !isFile(imp.path)) continue;
    const to = scriptOf(moduleKey(imp.path));
    if (to !== scriptOf(moduleKey(file))) asked.get(to).add(moduleKey(imp.path));
  }
}
// The exports of each lazy package module imported from outside its package, from the module itself (this Node loads
// it as the bundle's require() would: the bundle has the same file).
const lazyExports = new Map();
for (const key of LAZY_SCRIPTS.flatMap((name) => [...asked.get(name)])) {
  const file = resolvePath(Object.keys(inputs).find((f) => moduleKey(f) === key));
  let names;
  try {
    names = Object.keys(createRequire(import.meta.url)(file));
  } catch {
    names = Object.keys(await import(pathToFileURL(file).href));
  }
  lazyExports.set(key, names.filter((k) => k !== 'default' && k !== '__esModule'));
}

/**
 * Resolves as the bundle would, then turns an import of a module that lives in another script into its stand-in,
 * which names the module and its script. Only real files cross (see above). `crossed` collects the keys this script
 * asks the others for.
 */
function crossScript(own, crossed) {
  return {
    name: 'cross-script',
    setup(b) {
      b.onResolve({ filter: /.*/ }, async (a) => {
        if (a.pluginData?.crossScript === true || a.kind === 'entry-point') return undefined;
        const r = await b.resolve(a.path, { kind: a.kind, importer: a.importer, namespace: a.namespace, resolveDir: a.resolveDir, pluginData: { crossScript: true } });
        if (r.errors.length > 0 || r.external || r.namespace !== 'file') return undefined;
        const key = moduleKey(relative(process.cwd(), r.path).split(sep).join('/'));
        if (scriptOf(key) === own) return undefined;
        crossed.add(key);
        // A stand-in is CommonJS whatever the module is: `.cjs` keeps esbuild from reading a `.mjs` key as ESM.
        return { path: `${key}.cjs`, namespace: 'cross-script', pluginData: { key } };
      });
      b.onLoad({ filter: /.*/, namespace: 'cross-script' }, (a) => {
        const { key } = a.pluginData;
        const ask = `__bpLoad(${JSON.stringify(key)}, ${JSON.stringify(scriptOf(key))})`;
        const names = lazyExports.get(key);
        if (names === undefined) return { contents: `module.exports = ${ask};`, loader: 'js' };
        return { contents: standIn(ask, names), loader: 'js' };
      });
    },
  };
}
/** An entry that registers the getters of `keys` (modules of this script that others ask for), then runs `main`. */
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
/** Builds one of the CLI's scripts; checks it holds its own modules only and asks the others only for what they expose. */
async function buildScript(name, options) {
  const crossed = new Set();
  const result = await build(cliOptions({ ...options, outfile: `dist/${name}`, plugins: [crossScript(name, crossed), ...cliPlugins] }));
  if (result.warnings.length > 0) throw new Error(`${name} built with ${result.warnings.length} warning(s): fix them (an import.meta or import() the bundle cannot keep, most likely)`);
  for (const file of Object.keys(result.metafile.inputs)) {
    // The plugins' stateless modules (lazy-builtin:, zod-locales-en:, cross-script:) and the entry are no one's.
    if (file.includes(':') || file === 'backplane-cli-entry.js') continue;
    // A module in two scripts would be two modules (two classes, two registries).
    if (scriptOf(moduleKey(file)) !== name) throw new Error(`${file} was bundled into ${name}, but belongs to ${scriptOf(moduleKey(file))}`);
  }
  for (const key of crossed) if (!asked.get(scriptOf(key)).has(key)) throw new Error(`${name} asks ${scriptOf(key)} for ${key}, which it does not expose`);
  return writeScript(result, name);
}

// The further scripts first: the core pins their build ids. Their modules see the core's monotonic clock, not a copy
// of the perf-shim with another origin.
const ids = {};
for (const name of [...LAZY_SCRIPTS, KINDS_SCRIPT, MORE]) {
  ids[name] = await buildScript(name, {
    stdin: entryOf(asked.get(name), {}),
    define: { 'import.meta.url': '__bpUrl', 'import.meta.resolve': '__bpResolve', performance: '__bpPerformance' },
    banner: { js: `${SCRIPT_BANNER}var __bpPerformance = __bpLoad("src/util/perf-shim.ts", ${JSON.stringify(CORE)}).performance;` },
  });
}
const coreId = await buildScript(CORE, {
  stdin: entryOf(asked.get(CORE), ids, 'src/cli/main.ts'),
  inject: ['src/util/perf-shim.ts'],
  banner: { js: SCRIPT_BANNER },
});

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
const train = spawnSync(process.execPath, ['scripts/train-code-cache.mjs', 'dist/backplane.cjs', `dist/${CORE}=${coreId}`, ...Object.entries(ids).map(([name, id]) => `dist/${name}=${id}`)], {
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
