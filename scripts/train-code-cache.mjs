// Makes the CLI's V8 code caches at build time (scripts/build.mjs runs it; the CLI never writes one):
//
//   node scripts/train-code-cache.mjs dist/backplane.cjs dist/backplane-cli.js=<build id> dist/backplane-cli-more.js=<build id>
//
// It starts the CLI through the launcher just built, so every script is compiled exactly as at a real start (same
// text, same file name, no other V8 flags; the launcher hands each compiled script over, src/cli/launcher.ts), runs
// it once on a small graph of files in a temporary directory (some already right, some wrong, some missing, as a
// real run finds them) and a template, and on exit writes V8's code for every function that ran, beside each script
// (backplane-cli.js: backplane-cli.cache). A cache made right after compiling would hold only the top-level code;
// this one also spares a one-shot run compiling what it calls. A script the run did not need (the cluster's and the
// operator commands') is compiled at exit and gets the cache of its top-level code: what the one bundle's cache held
// for those modules before the CLI was split.
import { chmodSync, closeSync, existsSync, fsyncSync, mkdirSync, mkdtempSync, openSync, readFileSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { Script } from 'node:vm';
import { stringify } from 'yaml';

const [launcherArg, ...scriptArgs] = process.argv.slice(2);
const scripts = scriptArgs.map((a) => /^(.+\.js)=([0-9a-f]{64})$/.exec(a));
if (launcherArg === undefined || scripts.length === 0 || scripts.some((m) => m === null)) {
  console.error('usage: node scripts/train-code-cache.mjs LAUNCHER SCRIPT=BUILD_ID...');
  process.exit(2);
}
const wanted = new Map(scripts.map((m) => [resolve(m[1]), m[2]]));

const dir = mkdtempSync(join(tmpdir(), 'backplane-train-'));
const files = join(dir, 'files');
mkdirSync(files);
const resources = [{ kind: 'file', name: files, type: 'directory' }, { kind: 'noop', name: 'train' }];
for (let i = 0; i < 24; i++) {
  const path = join(files, `f${i}`);
  const content = `content of file ${i}\n`;
  // A third already as the graph wants it, a third with other content, a third missing.
  if (i % 3 === 0) writeFileSync(path, content, { mode: 0o644 });
  if (i % 3 === 1) writeFileSync(path, 'old\n', { mode: 0o600 });
  resources.push({ kind: 'file', name: path, content, mode: '0644' });
}
// A template: liquidjs's script and the template kind have their functions in the caches too.
resources.push({ kind: 'template', name: join(files, 'rendered.conf'), template: 'listen {{ vars.port }};\n{% for h in vars.hosts %}server {{ h }};\n{% endfor %}', vars: { port: 80, hosts: ['a', 'b'] }, mode: '0644' });
// A package check and a supervised service behind a config file, as in examples/nginx.yaml and the bench's nginx
// stack: the pkg and svc kinds' functions (the status file's reader; the svc's prepare, spawn, logger, http health
// check) are then in the kinds script's cache, where a run compiled them as it first called them. The check only
// reads dpkg's database (where there is one: a build elsewhere skips it); the service is `sleep`, stopped when the
// run ends, and its health check asks a server of this process's own.
const health = await healthServer();
if (existsSync('/var/lib/dpkg/status')) resources.push({ kind: 'pkg', name: 'dpkg' });
const svcRequire = existsSync('/var/lib/dpkg/status') ? { require: ['pkg[dpkg]'] } : {};
// And one of text and names only, which renders without liquidjs: the template kind's own renderer is cached too.
resources.push({ kind: 'template', name: join(files, 'plain.conf'), template: 'listen {{ vars.port }};\n', vars: { port: 80 }, mode: '0644', ...svcRequire, notify: ['svc[backplane-train]'] });
resources.push({ kind: 'svc', name: 'backplane-train', cmd: ['/bin/sleep', '60'], onAgentExit: 'stop', health: { http: `http://127.0.0.1:${health}/` } });
const graph = join(dir, 'graph.yaml');
// Half as one-line flow mappings, half as block mappings with block scalars (what `yaml` writes, and people): the fast
// reader's code for both is then in the cache; trained on flow lines alone, a block-style graph compiled its block
// paths at every run.
const half = Math.ceil(resources.length / 2);
const block = stringify(resources.slice(half).map((r) => (r.kind === 'file' && typeof r.content === 'string' ? { ...r, content: `${r.content}second line\n` } : r)))
  .trimEnd()
  .split('\n')
  .map((l) => `  ${l}`)
  .join('\n');
writeFileSync(graph, `resources:\n${resources.slice(0, half).map((r) => `  - ${JSON.stringify(r)}`).join('\n')}\n${block}\n`);

/** A port on loopback that answers every HTTP request with 200, for the service's health check; it keeps nothing up. */
function healthServer() {
  return new Promise((resolvePort, reject) => {
    const server = createServer((sock) => {
      sock.on('error', () => undefined);
      sock.once('data', () => sock.end('HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'));
    });
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.unref();
      resolvePort(server.address().port);
    });
  });
}

/** What the launcher compiled: file -> script. */
const compiled = new Map();
globalThis[Symbol.for('backplane.train')] = (file, id, script) => {
  if (wanted.get(file) !== id) throw new Error(`the launcher compiled ${file} of build ${id}, not the one this training run is for`);
  compiled.set(file, script);
};

process.on('exit', (code) => {
  try {
    if (code !== 0) return;
    for (const [file, id] of wanted) {
      // As the launcher reads it: the build made it ASCII and put its id at the end, so its bytes are its characters.
      const script = compiled.get(file) ?? new Script(readFileSync(file, 'latin1'), { filename: file });
      // The launcher checks the cache's checksum; V8 writes one only with this flag, which is part of the flag hash the
      // cache is made for (the launcher sets it the same way while it compiles).
      setFlagsFromString('--verify-snapshot-checksum');
      const data = script.createCachedData();
      setFlagsFromString('--no-verify-snapshot-checksum');
      const out = file.replace(/\.js$/, '.cache');
      const tmp = `${out}.tmp-${process.pid}`;
      const fd = openSync(tmp, 'wx', 0o644);
      try {
        // The launcher's header (src/cli/launcher.ts cacheHeader): the build id, padded to 96 bytes.
        writeSync(fd, `backplane-code-cache ${id}`.padEnd(95) + '\n');
        writeSync(fd, data);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      chmodSync(tmp, 0o644);
      renameSync(tmp, out);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// From source: the dist/ being built has no caches yet, and an old one must not be what this run's code comes from.
process.env['BACKPLANE_CODE_CACHE'] = 'off';
const launcher = resolve(launcherArg);
process.argv = [process.execPath, launcher, 'run', '--file', graph, '--converged-timeout', '0', '--no-api', '--state-dir', join(dir, 'state')];
createRequire(import.meta.url)(launcher);
