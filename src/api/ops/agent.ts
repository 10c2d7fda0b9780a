import { z } from 'zod';
import { ApiError, agentGraphSchema, agentStatusSchema, defineOp, type AgentView, type OpContext } from '../ops.js';

/** The agent's own graph: only an agent's API has one (not the CLI on a store). */
function agentOf(ctx: OpContext): AgentView {
  if (ctx.agent === undefined) {
    throw new ApiError(400, 'this answer comes from an agent, and none was reached', { hint: "run it on the agent's host (its --state-dir), or against its API with --api URL" });
  }
  return ctx.agent;
}

export const agentStatus = defineOp({
  name: 'agent.status',
  method: 'GET',
  path: '/v1/agent',
  role: 'viewer',
  summary: "Show this agent: its graph's states, what failed and why, the latest repairs, its cluster link",
  input: z.object({}),
  output: agentStatusSchema,
  mutates: false,
  run: async (ctx) => agentOf(ctx).status(),
});

export const agentGraph = defineOp({
  name: 'agent.graph',
  method: 'GET',
  path: '/v1/agent/graph',
  role: 'viewer',
  summary: "Show this agent's resource graph: every resource with its state and last change, and the edges",
  input: z.object({}),
  output: agentGraphSchema,
  mutates: false,
  run: async (ctx) => agentOf(ctx).graph(),
});
