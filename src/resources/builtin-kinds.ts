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

/**
 * Every built-in kind, imported statically, in the order of builtinKindNames (src/resources/registry.ts, which a
 * test holds this list to): for what needs them all at once and synchronously (the service specs' check of their
 * instances, schema generation, tests). `backplane run` never imports this module: its registry loads only the kinds
 * a graph names.
 */
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
