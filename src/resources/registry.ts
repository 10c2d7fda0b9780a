import type { KindRegistry } from '../graph/build.js';
import type { AnyResourceKind } from './types.js';
import { execKind } from './exec.js';
import { fileKind } from './file.js';
import { groupKind } from './group.js';
import { hostnameKind } from './hostname.js';
import { httpKind } from './http.js';
import { kvKind } from './kv.js';
import { msgKind } from './msg.js';
import { noopKind } from './noop.js';
import { pkgKind } from './pkg.js';
import { printKind } from './print.js';
import { svcKind } from './svc.js';
import { tcpKind } from './tcp.js';
import { templateKind } from './template.js';
import { timerKind } from './timer.js';
import { userKind } from './user.js';

/** The one list of resource kinds. Adding a kind means adding its file and one line here; the engine never changes. */
export const builtinKinds: readonly AnyResourceKind[] = [
  fileKind,
  templateKind,
  execKind,
  pkgKind,
  svcKind,
  userKind,
  groupKind,
  httpKind,
  tcpKind,
  noopKind,
  printKind,
  timerKind,
  msgKind,
  hostnameKind,
  kvKind,
];

export function createRegistry(kinds: readonly AnyResourceKind[] = builtinKinds): KindRegistry {
  const byName = new Map(kinds.map((k) => [k.kind, k]));
  return {
    get: (kind) => byName.get(kind),
    names: () => byName.keys(),
  };
}
