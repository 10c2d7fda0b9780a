import { Option, type Command } from 'commander';
import { BackplaneError } from '../errors.js';
import type { ClientFlags, OpClient } from '../api/client.js';
import { EXIT, reportError } from './common.js';

/**
 * `--output text|json` on every command (and `--json`, its older spelling). With json, stdout is the answer as JSON
 * (an API-backed command's: the op's answer as-is, the same document the HTTP API gives) for scripts; errors still
 * go to stderr as text, with the same exit codes.
 */

export interface OutputFlags {
  output?: string;
  json?: boolean;
}

export const OUTPUT_HELP = 'text or json: json prints the answer as JSON for scripts (errors still go to stderr as text, with the same exit codes)';

/** Adds --output and its alias --json. */
export function outputFlags(c: Command): Command {
  return c.addOption(new Option('--output <format>', OUTPUT_HELP).choices(['text', 'json'])).option('--json', 'the same as --output json');
}

export function isJson(flags: OutputFlags): boolean {
  if (flags.json === true && flags.output === 'text') throw new BackplaneError('E_USAGE', '--json and --output text both given', { hint: 'give one' });
  return flags.json === true || flags.output === 'json';
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** The flags that choose the API door (client.ts): --api, --api-ca, --token-file (the store flags are added apart). */
export function apiFlags(c: Command): Command {
  return c
    .option('--api <url>', "an agent's API (https://host:port) instead of the local agent or the store; the token comes from --token-file or $BACKPLANE_TOKEN")
    .option('--api-ca <file>', "PEM file of the CA (or the self-signed certificate) to trust for --api")
    .option('--token-file <file>', 'file holding the API token for --api (first line; must not be readable by group or others)');
}

/**
 * Runs `fn` with the client the flags select, and turns what it throws into an exit code. `fn` answers the exit code
 * (undefined: 0). The client is closed afterwards.
 */
export async function withClient(flags: ClientFlags & OutputFlags, fn: (client: OpClient, json: boolean) => Promise<number | void>): Promise<number> {
  let client: OpClient | undefined;
  try {
    const json = isJson(flags);
    const { clientFor } = await import('../api/client.js');
    client = await clientFor(flags);
    return (await fn(client, json)) ?? EXIT.ok;
  } catch (err) {
    return reportError(err);
  } finally {
    await client?.close().catch(() => undefined);
  }
}
