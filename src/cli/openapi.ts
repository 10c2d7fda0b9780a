import type { Command } from 'commander';
import { openApiDocument } from '../api/openapi.js';
import { OPS } from '../api/ops/index.js';

/** `backplane openapi`: the operator API's OpenAPI document, as every agent serves it at /openapi.json. */
export function registerOpenApi(program: Command): void {
  program
    .command('openapi')
    .description("print the operator API's OpenAPI 3.1 document (what every agent serves at /openapi.json)")
    .action(() => {
      process.stdout.write(`${JSON.stringify(openApiDocument(OPS), null, 2)}\n`);
    });
}
