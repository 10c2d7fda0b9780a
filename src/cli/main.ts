import { fstatSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { BackplaneError } from '../errors.js';
import { VERSION } from '../version.js';
import { EXIT, reportError } from './common.js';

// `backplane schema | head -1`: the reader has what it wanted and closed the pipe. Writing more fails with EPIPE,
// which is no error of ours: exit quietly instead of printing a stack trace. Only a pipe or socket can break, and
// process.stdout's first use builds its stream (Node's stream modules, net for a pipe): a run with its output in a
// file or /dev/null, as from cron, does not pay for it.
if (stdoutCanBreak()) {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(EXIT.ok);
    throw err;
  });
}
/** fd 1 is a pipe or socket (not a file, terminal or /dev/null; nor closed). */
function stdoutCanBreak(): boolean {
  try {
    const st = fstatSync(1);
    return st.isFIFO() || st.isSocket();
  } catch {
    return false;
  }
}

/**
 * No top-level await: the bundle of the CLI is compiled as one classic script so that V8 can take it from a code
 * cache (scripts/build.mjs, src/cli/launcher.ts), and a script cannot await at its top.
 */
async function main(): Promise<void> {
  const program = new Command()
    .name('backplane')
    .description('Parallel, event-driven configuration management: apply a resource graph and keep it converged.')
    .version(VERSION)
    .showHelpAfterError('(run with --help for usage)')
    // A command's options are its own, never its parent's (`hosts` has options and subcommands with the same names).
    .enablePositionalOptions()
    .exitOverride();

  // `run` is what cron and the benchmarks start over and over: it loads only its own command (and what the agent
  // needs), not the operator commands and their API ops, whose schemas cost tens of milliseconds to build.
  const args = process.argv.slice(2);
  const first = args.find((a) => !a.startsWith('-'));
  if (first === 'run') {
    (await import('./run.js')).registerRun(program);
  } else if (first === 'validate') {
    // The same for `validate`, which editors and CI pipelines run on every save and push, and `graph`: registering
    // every command read the rest of the CLI's script and its kinds' and zod's (~0.25 s against ~0.1 s for a small
    // graph). Both are roots of the core script (scripts/build.mjs).
    (await import('./validate.js')).registerValidate(program);
  } else if (first === 'graph') {
    (await import('./graph.js')).registerGraph(program);
  } else if (args.length > 0 && args.every((a) => a === '-V' || a === '--version')) {
    // `backplane --version` prints what the program knows: no command, and not the rest of the CLI's script that
    // registering them all reads (~220 ms against ~95 ms for a run of an empty graph).
  } else {
    const [run, validate, graph, schema, cluster, hosts, deploy, services, plans, apps, namespaces, status, token, openapi] = await Promise.all([
      import('./run.js'),
      import('./validate.js'),
      import('./graph.js'),
      import('./schema.js'),
      import('./cluster.js'),
      import('./hosts.js'),
      import('./deploy.js'),
      import('./services.js'),
      import('./plan.js'),
      import('./app.js'),
      import('./namespace.js'),
      import('./status.js'),
      import('./token.js'),
      import('./openapi.js'),
    ]);
    run.registerRun(program);
    validate.registerValidate(program);
    graph.registerGraph(program);
    schema.registerSchema(program);
    cluster.registerCluster(program);
    hosts.registerHosts(program);
    deploy.registerDeploy(program);
    services.registerServices(program);
    plans.registerPlans(program);
    apps.registerApps(program);
    namespaces.registerNamespaces(program);
    status.registerStatus(program);
    token.registerToken(program);
    openapi.registerOpenApi(program);
  }

  try {
    await program.parseAsync(process.argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode === 0 ? EXIT.ok : EXIT.invalid;
    } else if (err instanceof BackplaneError) {
      process.exitCode = reportError(err);
    } else {
      process.exitCode = reportError(err);
    }
  }
}

main().catch((err: unknown) => {
  process.exitCode = reportError(err);
});
