import { Command, CommanderError } from 'commander';
import { BackplaneError } from '../errors.js';
import { VERSION } from '../version.js';
import { EXIT, reportError } from './common.js';
import { registerApps } from './app.js';
import { registerCluster } from './cluster.js';
import { registerGraph } from './graph.js';
import { registerDeploy } from './deploy.js';
import { registerHosts } from './hosts.js';
import { registerNamespaces } from './namespace.js';
import { registerPlans } from './plan.js';
import { registerRun } from './run.js';
import { registerSchema } from './schema.js';
import { registerServices } from './services.js';
import { registerStatus } from './status.js';
import { registerOpenApi } from './openapi.js';
import { registerToken } from './token.js';
import { registerValidate } from './validate.js';


// `backplane schema | head -1`: the reader has what it wanted and closed the pipe. Writing more fails with EPIPE,
// which is no error of ours: exit quietly instead of printing a stack trace.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(EXIT.ok);
  throw err;
});

const program = new Command()
  .name('backplane')
  .description('Parallel, event-driven configuration management: apply a resource graph and keep it converged.')
  .version(VERSION)
  .showHelpAfterError('(run with --help for usage)')
  // A command's options are its own, never its parent's (`hosts` has options and subcommands with the same names).
  .enablePositionalOptions()
  .exitOverride();

registerRun(program);
registerValidate(program);
registerGraph(program);
registerSchema(program);
registerCluster(program);
registerHosts(program);
registerDeploy(program);
registerServices(program);
registerPlans(program);
registerApps(program);
registerNamespaces(program);
registerStatus(program);
registerToken(program);
registerOpenApi(program);

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
