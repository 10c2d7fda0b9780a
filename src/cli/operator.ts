import type { KeyPair } from '../cluster/identity.js';
import { fingerprint } from '../cluster/identity.js';
import type { Store } from '../cluster/store.js';
import { sealRecord, TrustFiles, trustScope, type TrustView } from '../cluster/trust.js';
import { BackplaneError } from '../errors.js';
import { wrapSigned } from '../scheduler/records.js';
import { readSchedState, type SchedState } from '../scheduler/state.js';
import { defaultStateDir } from '../state-dir.js';
import type { StoreFlags } from './cluster.js';
import { loadTrust } from './hosts.js';

/**
 * What the service commands share: the store, the hosts list this host believes, and — for the commands that
 * change something — this host's name and key, which sign the operator record. The name is looked up by key in the
 * hosts list, so the CLI signs as whatever name the agent on this host (same state directory) was approved under.
 */
export interface OperatorContext {
  readonly store: Store;
  readonly view: TrustView;
  readState(): Promise<SchedState>;
}

export async function operatorContext(store: Store, flags: StoreFlags): Promise<OperatorContext & { files: TrustFiles }> {
  const files = await TrustFiles.open(flags.stateDir ?? defaultStateDir(), trustScope((flags.etcd ?? '') !== '', flags.cluster));
  const view = await loadTrust(store, files);
  if (view === undefined) {
    throw new BackplaneError('E_USAGE', 'this host knows no cluster CA, so it cannot tell real cluster data from forged', {
      hint: 'run this on a host of the cluster with its --state-dir (where its agent keeps its keys)',
    });
  }
  return { store, view, files, readState: () => readSchedState(store, view) };
}

export interface Signer {
  readonly name: string;
  sign(key: string, body: string): string;
}

/** This host as an operator: its approved name, and a signer of `{by, record}` values. */
export async function operatorSigner(ctx: { view: TrustView; files: TrustFiles }): Promise<Signer> {
  const pair: KeyPair = await ctx.files.hostKey();
  const name = Object.entries(ctx.view.hosts.hosts).find(([, e]) => e.state === 'approved' && e.publicKey === pair.publicKey)?.[0];
  if (name === undefined) {
    throw new BackplaneError('E_USAGE', `this host's key (${fingerprint(pair.publicKey)}) is not approved in the cluster`, {
      hint: 'run the command on an approved host with its agent\'s --state-dir (see `backplane hosts list`)',
    });
  }
  if (!ctx.view.mayOperate(name)) {
    throw new BackplaneError('E_USAGE', `host ${name} may not change services or drain hosts: it is not an operator`, {
      hint: `on the CA's host: backplane hosts approve ${name} --operator`,
    });
  }
  let seq = Date.now();
  return {
    name,
    sign: (key, body) => {
      seq = Math.max(Date.now(), seq + 1);
      return wrapSigned(name, sealRecord(pair, key, seq, body));
    },
  };
}

/** 1.5 GiB -> "1.5G", for tables. */
export function size(bytes: number): string {
  const units = ['', 'K', 'M', 'G', 'T'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)}${units[i] ?? ''}`;
}

export function ago(ms: number, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60}s`;
  return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
}
