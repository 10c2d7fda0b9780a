import type { AnyOp } from '../ops.js';
import { auditList, tokensCreate, tokensList, tokensRevoke, whoami } from './access.js';
import { agentGraph, agentStatus } from './agent.js';
import { APP_OPS } from './apps.js';
import { DEPLOY_OPS } from './deploy.js';
import { EVENT_OPS } from './events.js';
import { HOST_OPS } from './hosts.js';
import { NAMESPACE_OPS } from './namespaces.js';
import { PLAN_OPS } from './plans.js';
import { SERVICE_OPS } from './services.js';

/**
 * Every op of the operator interface, in the order the OpenAPI document lists them. Adding one is adding it here:
 * the HTTP server routes it, the CLI's client can call it, and /openapi.json describes it.
 */
export const OPS: readonly AnyOp[] = [
  whoami,
  agentStatus,
  agentGraph,
  ...HOST_OPS,
  ...SERVICE_OPS,
  ...DEPLOY_OPS,
  ...PLAN_OPS,
  ...APP_OPS,
  ...EVENT_OPS,
  ...NAMESPACE_OPS,
  tokensList,
  tokensCreate,
  tokensRevoke,
  auditList,
] as unknown as readonly AnyOp[];
