import { Option, type Command } from 'commander';
import { OUTPUT_HELP, printJson } from './output.js';
import { loadGraphFile } from '../frontends/load.js';
import { createRegistry } from '../resources/registry.js';
import { EXIT, graphFileArg, reportError } from './common.js';

export function registerValidate(program: Command): void {
  program
    .command('validate')
    .description('check a graph file (syntax, kinds, parameters, references, cycles) without touching the machine')
    .argument('[file]', 'graph file (YAML), or give it with -f')
    .option('-f, --file <path>', 'graph file (YAML)')
    .addOption(new Option('--output <format>', OUTPUT_HELP).choices(['text', 'json']))
    .action(async (fileArg: string | undefined, opts: { file?: string; output?: string }) => {
      // validate changes nothing, so a signal can end it at once, whatever it is reading or evaluating.
      const onSignal = (sig: NodeJS.Signals): void => {
        process.stderr.write(`${sig}: validation stopped\n`);
        process.exit(EXIT.interrupted);
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      try {
        const g = await loadGraphFile(graphFileArg(fileArg, opts.file), createRegistry());
        for (const w of g.warnings) process.stderr.write(`warning: ${w.format()}\n`);
        if (opts.output === 'json') {
          printJson({ ok: true, resources: g.vertices.size, edges: g.edges.length, warnings: g.warnings.map((w) => ({ code: w.code, message: w.format() })) });
          process.exitCode = EXIT.ok;
          return;
        }
        const warned = g.warnings.length === 0 ? '' : `, ${g.warnings.length} warning${g.warnings.length === 1 ? '' : 's'}`;
        process.stdout.write(`ok: ${g.vertices.size} resources, ${g.edges.length} edges${warned}\n`);
        process.exitCode = EXIT.ok;
      } catch (err) {
        process.exitCode = reportError(err);
      }
    });
}
