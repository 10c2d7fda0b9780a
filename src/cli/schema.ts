import { Option, type Command } from 'commander';
import type { ClientFlags } from '../api/client.js';
import { backplanesList } from '../api/ops/events.js';
import { apiFlags, OUTPUT_HELP, outputFlags, printJson, withClient, type OutputFlags } from './output.js';
import { z } from 'zod';
import { findBackplane, loadBackplane, shippedKinds } from '../backplanes/registry.js';
import { BackplaneError } from '../errors.js';
import { graphJsonSchema } from '../frontends/json-schema.js';
import { builtinKinds } from '../resources/builtin-kinds.js';
import { serviceJsonSchema } from '../scheduler/spec.js';

export function registerSchema(program: Command): void {
  program
    .command('schema')
    .description('print the JSON Schema of the graph format, or with --service of a service spec (for editors and yaml-language-server)')
    .option('--service', 'the schema of service specs (backplane deploy -f) instead of graphs')
    .option('--backplane <kind>', "the schema of an application object of that kind (kind: redis), from its backplane's parameters")
    .addOption(new Option('--output <format>', 'json (the only output: accepted for scripts that pass it to every command)').choices(['json']))
    .action(async (flags: { service?: boolean; backplane?: string }) => {
      const schema = flags.backplane !== undefined ? await objectJsonSchema(flags.backplane) : flags.service === true ? serviceJsonSchema() : graphJsonSchema(builtinKinds);
      process.stdout.write(`${JSON.stringify(schema, null, 2)}\n`);
    });
  apiFlags(outputFlags(program.command('backplanes').description('list the application backplanes this host can run (shipped, and on BACKPLANE_PATH)')))
    .option('--state-dir <dir>', 'the agent whose host to ask (its API socket); without an agent, this host')
    .action(async (flags: ClientFlags & OutputFlags) => {
      process.exitCode = await withClient({ ...flags, cluster: 'default' }, async (client, json) => {
        const r = await client.call(backplanesList, {});
        if (json) return printJson(r);
        for (const b of r.backplanes) process.stdout.write(`${b.kind.padEnd(10)} ${b.description}\n`);
        process.stdout.write(r.path.length === 0 ? '(BACKPLANE_PATH is empty: only the shipped backplanes)\n' : `and any <dir>/<kind>/ on BACKPLANE_PATH=${r.path.join(':')}\n`);
      });
    });
  program
    .command('kinds')
    .description('list the resource kinds this agent knows')
    .addOption(new Option('--output <format>', OUTPUT_HELP).choices(['text', 'json']))
    .action((flags: OutputFlags) => {
      if (flags.output === 'json') printJson(builtinKinds.map((k) => ({ kind: k.kind, description: k.description })));
      else for (const k of builtinKinds) process.stdout.write(`${k.kind.padEnd(10)} ${k.description}\n`);
    });
}

/** An object document: kind and name, then the backplane's own parameters (zod's JSON Schema of them). */
async function objectJsonSchema(kind: string): Promise<Record<string, unknown>> {
  const ref = await findBackplane(kind);
  if (ref === undefined) throw new BackplaneError('E_UNKNOWN_KIND', `no backplane for kind "${kind}"`, { hint: `shipped: ${shippedKinds().join(', ')}; others are found on BACKPLANE_PATH` });
  const def = await loadBackplane(ref);
  const params = z.toJSONSchema(def.params, { io: 'input', unrepresentable: 'any' }) as { properties?: Record<string, unknown>; required?: string[] };
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    title: `${kind} object`,
    description: def.description,
    type: 'object',
    properties: { kind: { const: kind }, name: { type: 'string', pattern: '^[a-z0-9][a-z0-9-]{0,62}$' }, ...(params.properties ?? {}) },
    required: ['kind', 'name', ...(params.required ?? [])],
    additionalProperties: false,
  };
}
