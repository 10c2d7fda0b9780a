import { z } from 'zod';
import { VERSION } from '../version.js';
import { errorBody, type AnyOp } from './ops.js';

/**
 * The OpenAPI 3.1 document of the operator API, generated from the op table (so it cannot drift from what the
 * server does): every op's path, method, least role, parameters and its input and output as JSON Schema (zod's
 * own conversion). Served at GET /openapi.json without a token: it holds no cluster data.
 */

type Json = Record<string, unknown>;

function schemaOf(s: z.ZodType, io: 'input' | 'output'): Json {
  const out = z.toJSONSchema(s, { io, unrepresentable: 'any', target: 'draft-2020-12' }) as Json;
  delete out['$schema'];
  return out;
}

export function openApiDocument(ops: readonly AnyOp[]): Json {
  const paths: Record<string, Record<string, Json>> = {};
  const errorRef = { $ref: '#/components/schemas/Error' };
  const errors = (codes: readonly number[]): Json =>
    Object.fromEntries(codes.map((c) => [String(c), { description: ERROR_TEXT[c] ?? 'error', content: { 'application/json': { schema: errorRef } } }]));
  for (const op of ops) {
    const input = schemaOf(op.input, 'input');
    const props = (input['properties'] ?? {}) as Record<string, Json>;
    const required = new Set((input['required'] ?? []) as string[]);
    const pathParams = [...op.path.matchAll(/\{([a-zA-Z]+)\}/g)].map((m) => m[1] ?? '');
    const parameters: Json[] = pathParams.map((name) => ({ name, in: 'path', required: true, schema: props[name] ?? { type: 'string' } }));
    let requestBody: Json | undefined;
    if (op.method === 'GET' || op.method === 'DELETE') {
      for (const [name, schema] of Object.entries(props)) {
        if (!pathParams.includes(name)) parameters.push({ name, in: 'query', required: required.has(name), schema });
      }
    } else {
      const bodyProps = Object.fromEntries(Object.entries(props).filter(([k]) => !pathParams.includes(k)));
      const bodyRequired = [...required].filter((k) => !pathParams.includes(k));
      requestBody = {
        required: bodyRequired.length > 0,
        content: { 'application/json': { schema: { ...input, properties: bodyProps, ...(bodyRequired.length === 0 ? { required: undefined } : { required: bodyRequired }) } } },
      };
    }
    const path = (paths[op.path] ??= {});
    path[op.method.toLowerCase()] = {
      operationId: op.name,
      summary: op.summary,
      description: `Least role: ${op.role}.${op.mutates ? ' Changes the cluster; recorded in the audit log.' : ''}`,
      tags: [op.name.split('.')[0] ?? 'api'],
      'x-backplane-role': op.role,
      ...(parameters.length === 0 ? {} : { parameters }),
      ...(requestBody === undefined ? {} : { requestBody }),
      responses: {
        '200': { description: 'OK', content: { 'application/json': { schema: schemaOf(op.output, 'output') } } },
        ...errors([400, 401, 403, 404, 409, 503]),
      },
    };
  }
  paths['/v1/stream'] = {
    get: {
      operationId: 'stream',
      summary: 'Live updates as server-sent events: hello, resource, repair, cluster (what changed: refetch it), event',
      description: 'Least role: viewer. `event: <type>` and `data: <JSON>` per event; a `: ping` comment every 15 s.',
      tags: ['stream'],
      'x-backplane-role': 'viewer',
      responses: { '200': { description: 'an event stream', content: { 'text/event-stream': { schema: { type: 'string' } } } }, ...errors([401, 403]) },
    },
  };
  paths['/metrics'] = {
    get: {
      operationId: 'metrics',
      summary: 'Prometheus metrics of this agent (and of the controller, when this agent leads)',
      description: 'Least role: viewer.',
      tags: ['metrics'],
      'x-backplane-role': 'viewer',
      responses: { '200': { description: 'Prometheus text exposition format', content: { 'text/plain': { schema: { type: 'string' } } } }, ...errors([401, 403]) },
    },
  };
  return {
    openapi: '3.1.0',
    info: { title: 'Backplane operator API', version: VERSION, description: 'The API of every Backplane agent: its own graph, and the whole cluster. See docs/api.md.' },
    servers: [{ url: '/' }],
    security: [{ bearer: [] }],
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'bpt_<id>_<secret>, from `backplane token create`. Not needed on the agent\'s Unix socket (root only).' } },
      schemas: { Error: schemaOf(errorBody, 'output') },
    },
    paths,
  };
}

const ERROR_TEXT: Readonly<Record<number, string>> = {
  400: 'the input is invalid (the message says what and where)',
  401: 'no token, or a token that is malformed, unknown, forged, expired or revoked',
  403: "the caller's role or namespace does not allow it",
  404: 'no such thing',
  409: 'it conflicts with the current state (e.g. a plan that moved on)',
  503: 'this agent has no cluster store connection yet',
};
