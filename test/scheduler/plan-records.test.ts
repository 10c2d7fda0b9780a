import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { generateKeyPair } from '../../src/cluster/identity.js';
import { keys } from '../../src/cluster/keys.js';
import { sealHosts, sealRecord, TrustView } from '../../src/cluster/trust.js';
import type { PlanCommand, ServicePlan } from '../../src/scheduler/plan-types.js';
import { openCommandRecord, openPlanRecord, wrapSigned, type ServiceRecord } from '../../src/scheduler/records.js';
import { parseServiceText } from '../../src/scheduler/spec.js';
import type { ServiceSpec } from '../../src/scheduler/types.js';

/**
 * Who may write what in a plan's world: commands only from operator hosts; plan records from any approved host (the
 * controller, fenced by the store), but a plan can only point at spec records an operator signed — so a rogue
 * controller cannot "roll back" to a spec of its own making.
 */

const ca = generateKeyPair();
const op = generateKeyPair();
const plain = generateKeyPair();
let seq = 1;
const sign = (k: ReturnType<typeof generateKeyPair>, key: string, body: unknown): string => sealRecord(k, key, ++seq, JSON.stringify(body));

function view(): TrustView {
  const v = new TrustView(ca.publicKey);
  const since = new Date().toISOString();
  v.adopt(
    sealHosts(ca, {
      serial: 1,
      issuedAt: since,
      hosts: { op1: { publicKey: op.publicKey, state: 'approved', since, operator: true }, h2: { publicKey: plain.publicKey, state: 'approved', since } },
    }),
  );
  return v;
}

const parsed = parseServiceText('/t/web.yaml', 'name: web\ncount: 2\nrun: { cmd: [/bin/true] }\n')[0];
if (parsed === undefined) throw new Error('the test spec does not parse');
const spec: ServiceSpec = parsed;
const DEPLOYED_AT = '2026-12-02T00:00:00Z';
const record: ServiceRecord = { spec, source: '/t/web.yaml', deployedAt: DEPLOYED_AT };

function plan(target: { record: string; by: string; version: string }): ServicePlan {
  return {
    id: 'web-1',
    seq: 1,
    service: 'web',
    kind: 'deploy',
    toVersion: target.version,
    toCount: 2,
    target: { ...target, deployedAt: DEPLOYED_AT },
    trigger: { deployedAt: DEPLOYED_AT, version: target.version },
    strategy: { canary: 0, maxParallel: 1, startFirst: false, autoPromote: false, autoRevert: true, minHealthyMs: 0, healthyDeadlineMs: 1000, progressDeadlineMs: 0, maxUnavailable: 1 },
    status: 'running',
    paused: false,
    promote: 'done',
    createdAt: 1,
    updatedAt: 1,
    lastProgressAt: 1,
    phases: [],
    forced: [],
    restarted: {},
    log: [],
    commands: [],
  };
}

describe('plan records and commands: who may write them', () => {
  const v = view();
  const specByOp = sign(op, keys.service('web'), record);
  const specByPlain = sign(plain, keys.service('web'), record);

  test('a plan written by a controller (any approved host) pointing at an operator-signed spec is believed', () => {
    const key = keys.plan('web');
    const r = openPlanRecord(v, key, 'web', wrapSigned('h2', sign(plain, key, plan({ record: specByOp, by: 'op1', version: spec.version }))));
    assert.equal(r.ok, true, r.ok ? '' : r.why);
  });

  test('a plan whose target spec a non-operator signed is refused (no rollback to a spec of its own making)', () => {
    const key = keys.plan('web');
    const r = openPlanRecord(v, key, 'web', wrapSigned('h2', sign(plain, key, plan({ record: specByPlain, by: 'h2', version: spec.version }))));
    assert.equal(r.ok, false);
    assert.match(r.ok ? '' : r.why, /its target spec: host "h2" may not sign service specs/);
  });

  test('a plan naming a version its spec record is not, or another service, or copied to another key, is refused', () => {
    const key = keys.plan('web');
    const wrong = openPlanRecord(v, key, 'web', wrapSigned('h2', sign(plain, key, plan({ record: specByOp, by: 'op1', version: 'v9' }))));
    assert.match(wrong.ok ? '' : wrong.why, /its target spec is not version v9/);
    const moved = openPlanRecord(v, keys.plan('api'), 'api', wrapSigned('h2', sign(plain, key, plan({ record: specByOp, by: 'op1', version: spec.version }))));
    assert.equal(moved.ok, false);
    const unsigned = openPlanRecord(v, key, 'web', JSON.stringify(plan({ record: specByOp, by: 'op1', version: spec.version })));
    assert.match(unsigned.ok ? '' : unsigned.why, /not a signed plan/);
  });

  test('commands are believed only from operator hosts, for the key they are under', () => {
    const cmd: PlanCommand = { id: '0123456789abcdef', service: 'web', action: 'pause', planId: 'web-1', at: '2026-12-02T00:00:00Z' };
    const key = keys.cmd('web', cmd.id);
    const ok = openCommandRecord(v, 'web', cmd.id, wrapSigned('op1', sign(op, key, cmd)));
    assert.equal(ok.ok, true);
    assert.equal(ok.ok ? ok.value.by : '', 'op1');
    const notOperator = openCommandRecord(v, 'web', cmd.id, wrapSigned('h2', sign(plain, key, cmd)));
    assert.match(notOperator.ok ? '' : notOperator.why, /host "h2" may not steer plans/);
    const lying = openCommandRecord(v, 'web', cmd.id, wrapSigned('op1', sign(plain, key, cmd)));
    assert.equal(lying.ok, false, 'a non-operator cannot claim to be the operator');
    const elsewhere = openCommandRecord(v, 'api', cmd.id, wrapSigned('op1', sign(op, key, cmd)));
    assert.equal(elsewhere.ok, false, 'a command moved to another service key');
  });
});
