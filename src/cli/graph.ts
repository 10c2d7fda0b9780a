import { Option, type Command } from 'commander';
import { loadGraphFile } from '../frontends/load.js';
import { toDot } from '../graph/dot.js';
import { createRegistry } from '../resources/registry.js';
import { BackplaneError } from '../errors.js';
import { EXIT, graphFileArg, reportError } from './common.js';

export function registerGraph(program: Command): void {
  program
    .command('graph')
    .description('print a graph file as Graphviz dot or JSON (in dependency order), without touching the machine')
    .argument('[file]', 'graph file (YAML), or give it with -f')
    .option('-f, --file <path>', 'graph file (YAML)')
    .option('--format <format>', 'dot or json', 'dot')
    .addOption(new Option('--output <format>', 'json: the same as --format json').choices(['json']))
    .action(async (fileArg: string | undefined, opts: { file?: string; format: string; output?: string }) => {
      try {
        if (opts.output === 'json') opts.format = 'json';
        if (opts.format !== 'dot' && opts.format !== 'json')
          throw new BackplaneError('E_USAGE', `unknown format "${opts.format}"`, { hint: 'use --format dot or --format json' });
        const g = await loadGraphFile(graphFileArg(fileArg, opts.file), createRegistry());
        if (opts.format === 'dot') {
          process.stdout.write(toDot(g));
        } else {
          const order = g.topoOrder();
          const out = {
            source: g.source,
            order,
            resources: order.map((id) => {
              const v = g.vertices.get(id);
              return { id, kind: v?.kind, name: v?.name, params: showModes(v?.params), meta: v?.meta, line: v?.loc?.line };
            }),
            edges: g.edges,
          };
          process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
        }
        process.exitCode = EXIT.ok;
      } catch (err) {
        process.exitCode = reportError(err);
      }
    });
}

/** Modes as people write them ("0644"), not as the bits' decimal value (420) that nobody reads as a mode. */
function showModes(params: unknown): unknown {
  if (params === null || typeof params !== 'object' || !('mode' in params) || typeof params.mode !== 'number') return params;
  return { ...params, mode: params.mode.toString(8).padStart(4, '0') };
}
