// One bundled file for the CLI: Node resolves and compiles a single module instead of hundreds (zod alone is
// ~90 ms of module loading), which halves start-up — and start-up is paid on every cron-style run.
import { build } from 'esbuild';

import { copyFile, rm } from 'node:fs/promises';

await rm('dist', { recursive: true, force: true });
await build({
  // The graph module worker is its own entry: a worker thread starts from a file (src/frontends/typescript.ts).
  // Each shipped backplane's member runs as an instance's task: a file of its own (dist/backplanes/<kind>/member.mjs).
  entryPoints: {
    backplane: 'src/cli/main.ts',
    'graph-module-worker': 'src/frontends/module-worker.ts',
    'backplane-react-worker': 'src/backplanes/react-worker.ts',
    'backplanes/redis/member': 'src/backplanes/redis/member.ts',
    'backplanes/postgres/member': 'src/backplanes/postgres/member.ts',
  },
  outdir: 'dist',
  outExtension: { '.js': '.mjs' },
  // The etcd client (gRPC) is big and only needed in a cluster: dynamic imports become chunks loaded on demand.
  splitting: true,
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: 'linked',
  logLevel: 'warning',
  // tsx registers its own loader by file URL, so it must stay a real package, loaded only for TypeScript graphs.
  // etcd3 loads its .proto files at run time relative to its own __dirname, which a bundle does not have.
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
