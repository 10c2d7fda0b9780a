import type { Command } from 'commander';
import { graphJsonSchema } from '../frontends/json-schema.js';
import { builtinKinds } from '../resources/registry.js';

export function registerSchema(program: Command): void {
  program
    .command('schema')
    .description('print the JSON Schema of the graph format (for editors and yaml-language-server)')
    .action(() => {
      process.stdout.write(`${JSON.stringify(graphJsonSchema(builtinKinds), null, 2)}\n`);
    });
  program
    .command('kinds')
    .description('list the resource kinds this agent knows')
    .action(() => {
      for (const k of builtinKinds) process.stdout.write(`${k.kind.padEnd(10)} ${k.description}\n`);
    });
}
