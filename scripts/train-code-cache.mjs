// Makes the CLI bundle's V8 code cache at build time (scripts/build.mjs runs it; the CLI never writes one):
//
//   node scripts/train-code-cache.mjs dist/backplane-cli.js dist/backplane-cli.cache <build id>
//
// It compiles the bundle exactly as the launcher does (src/cli/launcher.ts: same text, no other V8 flags), runs the
// CLI once on a small graph of files in a temporary directory (some already right, some wrong, some missing, as a
// real run finds them), and on exit writes V8's code for every function that ran. A cache made right after compiling
// would hold only the top-level code; this one also spares a one-shot run compiling what it calls.
import { chmodSync, closeSync, fsyncSync, mkdirSync, mkdtempSync, openSync, readFileSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { Script } from 'node:vm';

const [bundleArg, outArg, buildId] = process.argv.slice(2);
if (bundleArg === undefined || outArg === undefined || !/^[0-9a-f]{64}$/.test(buildId ?? '')) {
  console.error('usage: node scripts/train-code-cache.mjs BUNDLE CACHE BUILD_ID');
  process.exit(2);
}
const bundle = resolve(bundleArg);
const out = resolve(outArg);

// The launcher's header (src/cli/launcher.ts cacheHeader): the build id, padded to 96 bytes.
const header = `backplane-code-cache ${buildId}`.padEnd(95) + '\n';

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
const graph = join(dir, 'graph.yaml');
writeFileSync(graph, `resources:\n${resources.map((r) => `  - ${JSON.stringify(r)}`).join('\n')}\n`);

// As the launcher reads it: the build made it ASCII and put its id at the end, so its bytes are its characters.
const source = readFileSync(bundle, 'latin1');
if (!source.endsWith(`\n//# backplane-build=${buildId}\n`)) throw new Error(`${bundle} does not end with its build id ${buildId}`);
const script = new Script(source, { filename: bundle });

process.on('exit', (code) => {
  try {
    if (code !== 0) return;
    // The launcher checks the cache's checksum; V8 writes one only with this flag, which is part of the flag hash the
    // cache is made for (the launcher sets it the same way while it compiles).
    setFlagsFromString('--verify-snapshot-checksum');
    const data = script.createCachedData();
    setFlagsFromString('--no-verify-snapshot-checksum');
    const tmp = `${out}.tmp-${process.pid}`;
    const fd = openSync(tmp, 'wx', 0o644);
    try {
      writeSync(fd, header);
      writeSync(fd, data);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    chmodSync(tmp, 0o644);
    renameSync(tmp, out);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

process.argv = [process.execPath, bundle, 'run', '--file', graph, '--converged-timeout', '0', '--no-api', '--state-dir', join(dir, 'state')];
const module = { exports: {} };
script.runInThisContext()(
  module.exports,
  createRequire(bundle),
  module,
  bundle,
  dirname(bundle),
  pathToFileURL(bundle).href,
  (specifier) => import.meta.resolve(specifier),
  (url) => import(url),
);
