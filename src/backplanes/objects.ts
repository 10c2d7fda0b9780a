/**
 * Application objects in a deploy file (`kind: redis`, `name: cache`, parameters): each is validated against its
 * backplane's parameter schema (errors at the file:line of the offending value) and expanded into services, which
 * are then validated exactly like an operator's own. Nothing is deployed unless every object and service is valid.
 */
import { BackplaneError, ValidationErrors, errorMessage, type SourceLocation } from '../errors.js';
import { DEFAULT_NAMESPACE, NAMESPACE_NAME } from '../scheduler/spec-schema.js';
import { readExpandedServices, type ObjectDoc } from '../scheduler/spec.js';
import type { ServiceSpec } from '../scheduler/types.js';
import { closest } from '../util/suggest.js';
import { expandEnv, findBackplane, KIND_PATTERN, loadBackplane, searchPath, shippedKinds } from './registry.js';

export interface ExpandedObject {
  readonly object: { readonly kind: string; readonly name: string; readonly params: Readonly<Record<string, unknown>> };
  /** The object's `namespace`, given to each of its services (they inherit its defaults and count in its quota). */
  readonly namespace?: string;
  readonly services: readonly ServiceSpec[];
  readonly where: SourceLocation;
}

const NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;

export async function expandObjects(docs: readonly ObjectDoc[]): Promise<ExpandedObject[]> {
  const errors: BackplaneError[] = [];
  const out: ExpandedObject[] = [];
  for (const doc of docs) {
    // `namespace` is the object's, not its backplane's: every service it expands to is in that namespace.
    const { kind, name, namespace, ...params } = doc.data;
    const where = doc.at(['kind']);
    if (typeof kind !== 'string' || !KIND_PATTERN.test(kind)) {
      errors.push(new BackplaneError('E_SCHEMA', `"kind" must be a backplane's name (lowercase letters, digits, '-')`, { where, hint: `shipped: ${shippedKinds().join(', ')}` }));
      continue;
    }
    if (typeof name !== 'string' || !NAME.test(name)) {
      errors.push(new BackplaneError('E_SCHEMA', `a ${kind} object needs a "name" (lowercase letters, digits, '-', at most 63)`, { where: doc.at(typeof name === 'string' ? ['name'] : []), hint: 'e.g. name: cache' }));
      continue;
    }
    if (namespace !== undefined && (typeof namespace !== 'string' || !NAMESPACE_NAME.test(namespace))) {
      errors.push(new BackplaneError('E_SCHEMA', `${kind} ${name}: "namespace" must be a namespace's name: 1-63 characters of a-z, 0-9 and "-", starting and ending with a letter or digit`, { where: doc.at(['namespace']), hint: 'e.g. namespace: team-a; nothing was deployed' }));
      continue;
    }
    const ref = await findBackplane(kind, searchPath());
    if (ref === undefined) {
      const near = closest(kind, shippedKinds());
      errors.push(
        new BackplaneError('E_UNKNOWN_KIND', `no backplane for kind "${kind}"`, {
          where,
          hint: `${near === undefined ? '' : `did you mean "${near}"? `}shipped: ${shippedKinds().join(', ')}; others are found on BACKPLANE_PATH (<dir>/${kind}/index.mjs); nothing was deployed`,
        }),
      );
      continue;
    }
    let def;
    try {
      def = await loadBackplane(ref);
    } catch (err) {
      errors.push(err instanceof BackplaneError ? new BackplaneError(err.code, err.message, { where, ...(err.hint === undefined ? {} : { hint: err.hint }) }) : new BackplaneError('E_APPLY', errorMessage(err), { where }));
      continue;
    }
    const parsed = def.params.safeParse(params);
    if (!parsed.success) {
      for (const i of (parsed.error).issues) {
        const path = i.path.filter((p): p is string | number => typeof p === 'string' || typeof p === 'number');
        errors.push(new BackplaneError('E_SCHEMA', `${kind} ${name}: ${path.length === 0 ? '' : `${path.join('.')}: `}${i.message}`, { where: doc.at(path.length === 0 ? ['kind'] : path), hint: `see docs/backplanes/${kind}.md; nothing was deployed` }));
      }
      continue;
    }
    let raw: readonly unknown[];
    try {
      raw = def.expand({ kind, name, params: parsed.data }, expandEnv(ref));
      if (!Array.isArray(raw)) throw new Error('expand did not return a list of services');
    } catch (err) {
      errors.push(new BackplaneError('E_APPLY', `the ${kind} backplane could not expand ${name}: ${errorMessage(err)}`, { where, hint: 'a bug in the backplane, or parameters it does not support; nothing was deployed' }));
      continue;
    }
    let specs: ServiceSpec[];
    try {
      specs = readExpandedServices(raw, where, `${name} as expanded by the ${kind} backplane`);
    } catch (err) {
      if (err instanceof ValidationErrors) errors.push(...err.errors);
      else errors.push(new BackplaneError('E_APPLY', errorMessage(err), { where }));
      continue;
    }
    const inNamespace = (s: ServiceSpec): ServiceSpec => {
      if (namespace === undefined) return s;
      const { namespace: _own, ...rest } = s;
      return namespace === DEFAULT_NAMESPACE ? rest : { ...rest, namespace };
    };
    out.push({ object: { kind, name, params: params }, services: specs.map((s) => ({ ...inNamespace(s), app: { kind, name } })), ...(namespace === undefined ? {} : { namespace }), where });
  }
  const seen = new Map<string, string>();
  for (const o of out) {
    for (const s of o.services) {
      const other = seen.get(s.name);
      if (other !== undefined) errors.push(new BackplaneError('E_DUPLICATE', `service "${s.name}" comes from both ${other} and ${o.object.name}`, { where: o.where, hint: 'give the objects different names' }));
      seen.set(s.name, o.object.name);
    }
  }
  if (errors.length > 0) throw new ValidationErrors(errors);
  return out;
}
