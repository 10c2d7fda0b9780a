import type { AnyOp } from '../ops.js';
import { agentGraph, agentStatus } from './agent.js';
import { NAMESPACE_OPS } from './namespaces.js';

/**
 * Every op of the operator interface, in the order the OpenAPI document lists them. Adding one is adding it here:
 * the HTTP server routes it, the CLI's client can call it, and /openapi.json describes it.
 */
export const OPS: readonly AnyOp[] = [agentStatus, agentGraph, ...NAMESPACE_OPS] as unknown as readonly AnyOp[];
