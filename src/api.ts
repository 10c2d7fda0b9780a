/**
 * The public TypeScript API for graphs written as modules (`backplane run --file graph.ts`):
 *
 *   import type { GraphFn, GraphModule } from 'backplane';
 *   // The return annotation makes TypeScript flag misspelt parameters too (excess property checks).
 *   const graph: GraphFn = ({ host, facts, collected }): GraphModule => ({
 *     resources: [{ kind: 'file', name: `/srv/${host}/motd`, content: `${facts.cpus} cpus\n` }],
 *   });
 *   export default graph;
 *
 * Each resource is typed from the same zod schema that validates it, so an editor checks kinds, parameter names
 * and types as you write.
 */
import type { z } from 'zod';
import type { ExportEntry } from './graph/collect.js';
import type { MetaSchema } from './graph/meta.js';
import type { ExecSchema } from './resources/exec-schema.js';
import type { FileSchema } from './resources/file-schema.js';
import type { GroupSchema } from './resources/group.js';
import type { HttpSchema } from './resources/http.js';
import type { PkgSchema } from './resources/pkg/schema.js';
import type { SvcSchema } from './resources/svc-schema.js';
import type { TcpSchema } from './resources/tcp.js';
import type { TemplateSchema } from './resources/template.js';
import type { HostFacts, ServiceInstance, ServiceInstances } from './resources/types.js';
import type { UserSchema } from './resources/user.js';
import type { ServiceInput } from './scheduler/spec-schema.js';

/** `kind[name]` or `kind:name`. */
export type Ref = `${string}[${string}]` | `${string}:${string}`;

interface Common {
  /** Unique among resources of its kind. */
  name: string;
  require?: Ref | readonly Ref[];
  before?: Ref | readonly Ref[];
  notify?: Ref | readonly Ref[];
  subscribe?: Ref | readonly Ref[];
  meta?: z.input<MetaSchema>;
  /** Export to every host (true) or to the named hosts instead of managing it here. */
  export?: true | readonly string[];
}

/** Parameters that default from the name become optional. */
type Decl<K extends string, S extends z.ZodType, Defaulted extends string = never> = { kind: K } & Common &
  Omit<z.input<S>, Defaulted> &
  Partial<Pick<z.input<S>, Extract<keyof z.input<S>, Defaulted>>>;

export type ResourceDecl =
  | Decl<'file', FileSchema, 'path'>
  | Decl<'template', TemplateSchema, 'path'>
  | Decl<'exec', ExecSchema>
  | Decl<'pkg', PkgSchema, 'name'>
  | Decl<'svc', SvcSchema>
  | Decl<'user', UserSchema, 'name'>
  | Decl<'group', GroupSchema, 'name'>
  | Decl<'http', HttpSchema, 'url'>
  | Decl<'tcp', TcpSchema, 'address'>
  | ({ kind: 'noop' } & Common)
  | ({ kind: 'print'; msg: string } & Common)
  | ({ kind: 'timer'; interval: number | string } & Common);

/**
 * Which exports this host collects, and what it takes from them: a collected resource is `set` plus exactly the
 * exporter's parameters named in `take` (default: the kind's parameters that give no power — not a file's source,
 * owner or setuid bits, not a command). A file rule must set or take `path`. See "Clusters" in the README.
 */
export type CollectDecl = {
  [K in ResourceDecl['kind']]: {
    kind: K;
    from?: '*' | readonly string[];
    set?: Partial<Record<ParamOf<K>, unknown>>;
    take?: readonly ParamOf<K>[];
  };
}[ResourceDecl['kind']];

/** The parameter names of a kind, as `take` and `set` may name them. */
type ParamOf<K extends ResourceDecl['kind']> = Exclude<keyof Extract<ResourceDecl, { kind: K }>, Exclude<keyof Common, 'name'> | 'kind'>;

export interface GraphContext {
  /** This agent's hostname (--hostname). */
  readonly host: string;
  readonly facts: HostFacts;
  /** Every resource exported in the cluster that is addressed to this host (before any collect rule). */
  readonly collected: readonly ExportEntry[];
  /**
   * Service discovery: each scheduled service's healthy instances (host, address, ports, index, id, version), sorted
   * by index; a service with none is absent, so read it as `services['api'] ?? []`. The graph is re-evaluated when
   * they change. Empty where the agent has no cluster store open.
   */
  readonly services: ServiceInstances;
}

export interface GraphModule {
  resources: readonly ResourceDecl[];
  collect?: readonly CollectDecl[];
}

/** A graph module's default export: re-evaluated whenever the module file, the collected data or `services` changes. */
export type GraphFn = (ctx: GraphContext) => GraphModule | Promise<GraphModule>;

/** A resource of an instance (a service's `files`): a graph resource without relations or export. */
export type InstanceFileDecl = ResourceDecl extends infer R ? (R extends unknown ? Omit<R, 'require' | 'before' | 'notify' | 'subscribe' | 'export'> : never) : never;

/**
 * A service spec written in TypeScript (`backplane deploy -f web.ts`); the module's default export is one, a list,
 * or a function returning either (docs/services.md):
 *
 *   import type { ServiceDecl } from 'backplane';
 *   export default { name: 'web', count: 3, run: { cmd: ['python3', '-m', 'http.server', '{{ instance.port.http }}'] },
 *     ports: { http: {} } } satisfies ServiceDecl;
 */
export type ServiceDecl = Omit<ServiceInput, 'files'> & { files?: readonly InstanceFileDecl[] };

/** What a service module may export as its default. */
export type ServiceModule = ServiceDecl | readonly ServiceDecl[] | (() => ServiceDecl | readonly ServiceDecl[] | Promise<ServiceDecl | readonly ServiceDecl[]>);

export type { ExportEntry, HostFacts, ServiceInstance, ServiceInstances };
