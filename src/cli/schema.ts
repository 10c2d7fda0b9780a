import type { Command } from 'commander';
import { graphJsonSchema } from '../frontends/json-schema.js';
import { builtinKinds } from '../resources/registry.js';
import { serviceJsonSchema } from '../scheduler/spec.js';

export function registerSchema(program: Command): void {
  program
    .command('schema')
    .description('print the JSON Schema of the graph format, or with --service of a service spec (for editors and yaml-language-server)')
    .option('--service', 'the schema of service specs (backplane deploy -f) instead of graphs')
    .action((flags: { service?: boolean }) => {
      const schema = flags.service === true ? serviceJsonSchema() : graphJsonSchema(builtinKinds);
      process.stdout.write(`${JSON.stringify(schema, null, 2)}\n`);
    });
  program
    .command('kinds')
    .description('list the resource kinds this agent knows')
    .action(() => {
      for (const k of builtinKinds) process.stdout.write(`${k.kind.padEnd(10)} ${k.description}\n`);
    });
}
