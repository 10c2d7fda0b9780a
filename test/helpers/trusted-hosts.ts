import assert from 'node:assert/strict';
import { generateKeyPair, type KeyPair } from '../../src/cluster/identity.js';
import { sealHosts, TrustView, withHost, type HostsDoc } from '../../src/cluster/trust.js';

/**
 * The smallest signed cluster the instance tests need: a CA, c1 (an operator host, which the tests elect controller)
 * and h1 (the host under test), both approved, and h1's view of that hosts list.
 */
export function controllerAndHost(): { readonly pairs: Record<'c1' | 'h1', KeyPair>; readonly view: TrustView; readonly since: string } {
  const ca = generateKeyPair();
  const pairs: Record<'c1' | 'h1', KeyPair> = { c1: generateKeyPair(), h1: generateKeyPair() };
  const since = '2026-12-01T00:00:00.000Z';
  let doc: HostsDoc = { serial: 0, issuedAt: '', hosts: {} };
  doc = withHost(doc, 'c1', { publicKey: pairs.c1.publicKey, state: 'approved', since, operator: true });
  doc = withHost(doc, 'h1', { publicKey: pairs.h1.publicKey, state: 'approved', since });
  const view = new TrustView(ca.publicKey);
  assert.equal(view.adopt(sealHosts(ca, doc)), 'newer');
  return { pairs, view, since };
}
