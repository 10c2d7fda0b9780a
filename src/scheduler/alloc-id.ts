/**
 * An alloc id: `<service>.<index>.<8 hex>` (plans.ts makes them; the service name is SERVICE_NAME's in spec-schema.ts).
 * One pattern for everything that recognises one: the assignment records' check, the agent's list of the instances
 * in its running graph, and the clean-up of stopped instances' state directories, which must all agree on what is
 * an instance. A source text, without anchors, to build those expressions from; no zod here (the agent's core
 * imports it).
 */
export const ALLOC_ID_SOURCE = '[a-z0-9][a-z0-9-]{0,62}\\.\\d{1,6}\\.[0-9a-f]{8}';
