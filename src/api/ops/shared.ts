import { z } from 'zod';
import type { SchedState } from '../../scheduler/state.js';
import type { ServiceSpec } from '../../scheduler/types.js';
import { ApiError, visibleTo, type OpContext } from '../ops.js';

/** What the service ops share: a service's namespace, and the 404 of a name nobody deployed. */

/** A spec's namespace (`default` when it names none). */
export function specNamespace(spec: ServiceSpec | undefined): string {
  return (spec as { readonly namespace?: string } | undefined)?.namespace ?? 'default';
}

/** The namespace a service belongs to: its spec's, else an instance's spec's (a removed service), else `default`. */
export function namespaceOf(state: SchedState, name: string): string {
  const spec: ServiceSpec | undefined = state.services.get(name)?.spec ?? [...state.assigns.values()].find((a) => a.alloc.service === name)?.spec;
  return specNamespace(spec);
}

/** The scope of an op on one service `input.name`: the namespace it is in now. */
export async function serviceScope(input: { readonly name: string }, ctx: OpContext): Promise<string> {
  return namespaceOf(await (await ctx.cluster()).readState(), input.name);
}

/** May the caller see service `name`? (A namespace-scoped token sees only its namespace's.) */
export function serviceVisible(ctx: OpContext, state: SchedState, name: string): boolean {
  return visibleTo(ctx.caller, namespaceOf(state, name));
}

/** 404 for a service that is not there, with the CLI's exit code of old (2: a name the operator got wrong). */
export function noService(name: string, hint = 'see `backplane services`'): ApiError {
  return new ApiError(404, `no service "${name}"`, { code: 'E_USAGE', hint });
}

/** A service or object name in a path: what specs allow, so a path never carries anything else. */
export const nameParam = () => z.string().min(1).max(253);

export const resourcesSchema = z.object({ cpu: z.number(), memory: z.number() });
