import { z } from 'zod';
import { metaSchema } from '../graph/meta.js';
import type { AnyResourceKind } from '../resources/types.js';

type JsonObject = Record<string, unknown>;

/**
 * JSON Schema for the native graph format, generated from the same zod schemas that validate graphs, so editors
 * (yaml-language-server: `# yaml-language-server: $schema=...`) complete and check exactly what the agent accepts.
 */
export function graphJsonSchema(kinds: readonly AnyResourceKind[]): JsonObject {
  const refs = { type: ['string', 'array'], items: { type: 'string' }, description: 'kind[name] or kind:name, or a list of them' };
  const meta = z.toJSONSchema(metaSchema(), { io: 'input', unrepresentable: 'any' });
  delete meta['$schema'];
  const variants = kinds.map((k) => {
    const params = z.toJSONSchema(k.schema, { io: 'input', unrepresentable: 'any' });
    const props = params['properties'] ?? {};
    const required = (params['required'] ?? []).filter((r) => k.defaults?.('x')[r] === undefined);
    return {
      type: 'object',
      description: k.description,
      properties: {
        kind: { const: k.kind },
        name: { type: 'string', description: 'unique among resources of this kind' },
        require: refs,
        before: refs,
        notify: refs,
        subscribe: refs,
        meta,
        export: {
          type: ['boolean', 'string', 'array'],
          items: { type: 'string' },
          description: 'publish for other hosts to collect instead of managing it here: true (every host) or host name(s)',
        },
        ...props,
      },
      required: ['kind', 'name', ...required],
      additionalProperties: false,
    };
  });
  const hosts = { type: ['string', 'array'], items: { type: 'string' }, description: 'exporting host(s); default: every host' };
  const rules = kinds.map((k) => {
    const props = z.toJSONSchema(k.schema, { io: 'input', unrepresentable: 'any' })['properties'] ?? {};
    const names = Object.keys(props);
    return {
      type: 'object',
      properties: {
        kind: { const: k.kind },
        from: hosts,
        set: { type: 'object', properties: props, additionalProperties: false, description: 'parameters this host decides; {host}, {name}, {basename} are replaced' },
        take: {
          type: 'array',
          items: { enum: names },
          description: "the exporter's parameters to take; default: those that give no power here (validation warns when one that does is named)",
        },
      },
      required: ['kind'],
      additionalProperties: false,
    };
  });
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    $id: 'https://backplane.dev/schema/graph.schema.json',
    title: 'Backplane graph',
    type: 'object',
    properties: {
      resources: { type: 'array', items: { oneOf: variants } },
      collect: { type: 'array', items: { oneOf: rules }, description: "which other hosts' exports this host applies, and what it takes from them" },
    },
    additionalProperties: false,
  };
}
