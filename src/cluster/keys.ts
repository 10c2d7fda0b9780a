import { StoreError } from './store.js';

/**
 * Key layout. In etcd everything lives under `/backplane/<cluster>/`, so several clusters (and anything else) can
 * share one etcd, and a store scoped to a cluster cannot touch another's keys. Store keys are relative to that root:
 *
 *   nodes/<host>                          membership: one key per live agent, attached to its lease
 *   exported/<host>/<kind>/<name>         resources exported by <host>, collected by others
 *   election/<name>/<lease id>            candidates of election <name>; the oldest is the leader (election.ts)
 *   trust/ca                              the cluster CA's public key (believed only if it matches a pinned one)
 *   trust/hosts                           the CA-signed list of approved and revoked hosts (trust.ts)
 *   joins/<host>                          a host's request to be approved: its public key and token proof
 *   kv/<host>/<key>                       a value the host publishes (the `kv` resource kind), signed like exports
 *   meta/<name>                           cluster-wide settings (e.g. meta/layout: the layout version)
 *   services/<name>                       a service spec (or its removal), signed by an operator host
 *   sched/assign/<host>/<alloc>           an instance assigned to <host>, signed by the controller, fenced
 *   sched/status/<host>/<alloc>           what <host> reports about it, signed by <host>, under its lease
 *   sched/drain/<host>                    an operator's drain (or undrain) of <host>, signed
 *   sched/events/<seq>                    what the controller decided and why, signed, newest 1,000 kept
 *   sched/plan|history|cmd/...            rollout plans, their history, operator commands (plan-types.ts)
 *   apps/<name>                           an application object (`kind: redis`), signed by an operator host
 *   sched/app/<name>                      its backplane's state (members' roles, discovery entries), controller-signed
 *   sched/scale/<service>                 a count chosen within the operator's scale bounds, controller-signed
 *   sched/scalereq/<host>/<alloc>         an instance's request to scale its service, signed by <host>
 *   api/tokens/<id>                       an API token's record (its role, namespace, expiry, secret's hash), operator-signed
 *   policy/namespaces/<ns>                a namespace's quota and defaults (or their removal), signed by an operator host
 *
 * Every variable segment is percent-encoded, so a resource named `/etc/motd` or a host named `a/b` can never be
 * mistaken for extra path segments and prefix lists stay exact (`nodes/a/` does not match `nodes/ab`).
 */

export const ROOT = '/backplane/';
export const LAYOUT_VERSION = 1;

const CLUSTER_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;

/** The etcd prefix of a cluster's keys. */
export function clusterRoot(cluster: string): string {
  if (!CLUSTER_NAME.test(cluster)) {
    throw new StoreError('invalid', `cluster name "${cluster}" is not valid`, {
      hint: 'use 1-63 characters of a-z, 0-9, ".", "_" or "-", starting with a letter or digit',
    });
  }
  return `${ROOT}${cluster}/`;
}

/** Encodes one path segment. Only characters that cannot be confused with structure are left as they are. */
export function segment(value: string): string {
  if (value === '') throw new StoreError('invalid', 'a store key segment must not be empty');
  return encodeURIComponent(value).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

export function decodeSegment(value: string): string {
  return decodeURIComponent(value);
}

/** decodeSegment for keys read from the store: a malformed escape (anyone can write one) is no key of ours. */
function decodeOrUndefined(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  try {
    return decodeURIComponent(value);
  } catch {
    return undefined;
  }
}

export const keys = {
  nodesPrefix: 'nodes/',
  node: (host: string): string => `nodes/${segment(host)}`,

  exportedPrefix: 'exported/',
  exportedByHost: (host: string): string => `exported/${segment(host)}/`,
  exported: (host: string, kind: string, name: string): string => `exported/${segment(host)}/${segment(kind)}/${segment(name)}`,

  electionsPrefix: 'election/',
  election: (name: string): string => `election/${segment(name)}/`,

  meta: (name: string): string => `meta/${segment(name)}`,

  trustPrefix: 'trust/',
  trustCa: 'trust/ca',
  trustHosts: 'trust/hosts',

  kvPrefix: 'kv/',
  kvByHost: (host: string): string => `kv/${segment(host)}/`,
  kv: (host: string, key: string): string => `kv/${segment(host)}/${segment(key)}`,

  joinsPrefix: 'joins/',
  join: (host: string): string => `joins/${segment(host)}`,

  servicesPrefix: 'services/',
  service: (name: string): string => `services/${segment(name)}`,
  schedPrefix: 'sched/',
  assignPrefix: 'sched/assign/',
  assignByHost: (host: string): string => `sched/assign/${segment(host)}/`,
  assign: (host: string, alloc: string): string => `sched/assign/${segment(host)}/${segment(alloc)}`,
  statusPrefix: 'sched/status/',
  statusByHost: (host: string): string => `sched/status/${segment(host)}/`,
  status: (host: string, alloc: string): string => `sched/status/${segment(host)}/${segment(alloc)}`,
  drainPrefix: 'sched/drain/',
  drain: (host: string): string => `sched/drain/${segment(host)}`,
  eventsPrefix: 'sched/events/',
  /** The current (or last) plan of each service (plan-types.ts), written by the controller. */
  planPrefix: 'sched/plan/',
  plan: (service: string): string => `sched/plan/${segment(service)}`,
  /** Finished plans, per service, by sequence number (zero-padded so they sort). */
  historyPrefix: 'sched/history/',
  historyOf: (service: string): string => `sched/history/${segment(service)}/`,
  history: (service: string, seq: number): string => `sched/history/${segment(service)}/${String(seq).padStart(10, '0')}`,
  /** Operator commands for a service's plan (pause, promote, ...), consumed by the controller. */
  cmdPrefix: 'sched/cmd/',
  cmd: (service: string, id: string): string => `sched/cmd/${segment(service)}/${segment(id)}`,
  /** Application objects (`kind: redis`, ...), operator-signed like services: `apps/<name>`. */
  appsPrefix: 'apps/',
  app: (name: string): string => `apps/${segment(name)}`,
  /** Each application object's state as its backplane keeps it (controller-signed). */
  appStatePrefix: 'sched/app/',
  appState: (name: string): string => `sched/app/${segment(name)}`,
  /** A count chosen within the operator's bounds (by an instance's request or a backplane), controller-signed. */
  scalePrefix: 'sched/scale/',
  scale: (service: string): string => `sched/scale/${segment(service)}`,
  /** An instance's request to scale its service, written by its agent (host-signed), consumed by the controller. */
  scaleReqPrefix: 'sched/scalereq/',
  scaleReqByHost: (host: string): string => `sched/scalereq/${segment(host)}/`,
  scaleReq: (host: string, alloc: string): string => `sched/scalereq/${segment(host)}/${segment(alloc)}`,
  /** Cluster-wide policy set by operators (src/scheduler/policy.ts). */
  policyPrefix: 'policy/',
  /** A namespace's quota and defaults, operator-signed: `policy/namespaces/<ns>`. */
  namespacePolicyPrefix: 'policy/namespaces/',
  namespacePolicy: (ns: string): string => `policy/namespaces/${segment(ns)}`,
  /** API tokens (src/api/tokens.ts), operator-signed. */
  apiTokensPrefix: 'api/tokens/',
  /** Zero-padded so keys sort in order. */
  event: (seq: number): string => `sched/events/${String(seq).padStart(16, '0')}`,
} as const;

/** `services/<name>` -> name. */
export function parseServiceKey(key: string): string | undefined {
  return decodeOrUndefined(/^services\/([^/]+)$/.exec(key)?.[1]);
}

/** `policy/namespaces/<ns>` -> ns. */
export function parseNamespacePolicyKey(key: string): string | undefined {
  return decodeOrUndefined(/^policy\/namespaces\/([^/]+)$/.exec(key)?.[1]);
}

/** `sched/assign/<host>/<alloc>` or `sched/status/<host>/<alloc>` -> host and alloc. */
export function parseAllocKey(key: string): { kind: 'assign' | 'status'; host: string; alloc: string } | undefined {
  const m = /^sched\/(assign|status)\/([^/]+)\/([^/]+)$/.exec(key);
  const host = decodeOrUndefined(m?.[2]);
  const alloc = decodeOrUndefined(m?.[3]);
  if (m === null || host === undefined || alloc === undefined) return undefined;
  return { kind: m[1] === 'assign' ? 'assign' : 'status', host, alloc };
}

/** `apps/<name>` -> name. */
export function parseAppKey(key: string): string | undefined {
  return decodeOrUndefined(/^apps\/([^/]+)$/.exec(key)?.[1]);
}

/** `sched/app/<name>` -> name. */
export function parseAppStateKey(key: string): string | undefined {
  return decodeOrUndefined(/^sched\/app\/([^/]+)$/.exec(key)?.[1]);
}

/** `sched/scale/<service>` -> service. */
export function parseScaleKey(key: string): string | undefined {
  return decodeOrUndefined(/^sched\/scale\/([^/]+)$/.exec(key)?.[1]);
}

/** `sched/scalereq/<host>/<alloc>` -> host and alloc. */
export function parseScaleReqKey(key: string): { host: string; alloc: string } | undefined {
  const m = /^sched\/scalereq\/([^/]+)\/([^/]+)$/.exec(key);
  const host = decodeOrUndefined(m?.[1]);
  const alloc = decodeOrUndefined(m?.[2]);
  return host === undefined || alloc === undefined ? undefined : { host, alloc };
}

/** `sched/plan/<service>` -> service. */
export function parsePlanKey(key: string): string | undefined {
  return decodeOrUndefined(/^sched\/plan\/([^/]+)$/.exec(key)?.[1]);
}

/** `sched/history/<service>/<seq>` -> service and seq. */
export function parseHistoryKey(key: string): { service: string; seq: number } | undefined {
  const m = /^sched\/history\/([^/]+)\/(\d{1,15})$/.exec(key);
  const service = decodeOrUndefined(m?.[1]);
  return m === null || service === undefined ? undefined : { service, seq: Number(m[2]) };
}

/** `sched/cmd/<service>/<id>` -> service and id. */
export function parseCmdKey(key: string): { service: string; id: string } | undefined {
  const m = /^sched\/cmd\/([^/]+)\/([^/]+)$/.exec(key);
  const service = decodeOrUndefined(m?.[1]);
  const id = decodeOrUndefined(m?.[2]);
  return service === undefined || id === undefined ? undefined : { service, id };
}

export function parseDrainKey(key: string): string | undefined {
  return decodeOrUndefined(/^sched\/drain\/([^/]+)$/.exec(key)?.[1]);
}

/** The host a `nodes/<host>` key belongs to, or undefined for any other key. */
export function parseNodeKey(key: string): string | undefined {
  return decodeOrUndefined(/^nodes\/([^/]+)$/.exec(key)?.[1]);
}

export function parseKvKey(key: string): { host: string; key: string } | undefined {
  const m = /^kv\/([^/]+)\/([^/]+)$/.exec(key);
  const host = decodeOrUndefined(m?.[1]);
  const k = decodeOrUndefined(m?.[2]);
  return host === undefined || k === undefined ? undefined : { host, key: k };
}

/** The host a `joins/<host>` key belongs to, or undefined for any other key. */
export function parseJoinKey(key: string): string | undefined {
  return decodeOrUndefined(/^joins\/([^/]+)$/.exec(key)?.[1]);
}

export function parseExportedKey(key: string): { host: string; kind: string; name: string } | undefined {
  const m = /^exported\/([^/]+)\/([^/]+)\/([^/]+)$/.exec(key);
  const host = decodeOrUndefined(m?.[1]);
  const kind = decodeOrUndefined(m?.[2]);
  const name = decodeOrUndefined(m?.[3]);
  if (host === undefined || kind === undefined || name === undefined) return undefined;
  return { host, kind, name };
}

/** The smallest string greater than every string starting with `prefix` (etcd's range_end for a prefix). */
export function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i] = end[i]! + 1;
      return end.subarray(0, i + 1);
    }
  }
  // All 0xff (or empty): etcd's "\0" means "to the end of the keyspace".
  return Buffer.from([0]);
}
