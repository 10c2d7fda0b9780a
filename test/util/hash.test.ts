import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { sha256Hex } from '../../src/util/hash.js';
import { randomHex } from '../../src/util/random.js';
import { agentCgroups, killCgroups, removeCgroups } from '../helpers/cgroups.js';
import { BIN, ensureBuilt } from '../helpers/cli.js';

describe('sha256Hex', () => {
  test('is node:crypto sha256 hex, for the names derived from it (state directories, cgroups, spec hashes)', () => {
    const inputs = ['', 'svc[web]', 'svc[nginx-bench]', '/var/lib/backplane\0svc[web]', 'ü€😀\u0000\uffff', 'lone \ud800 and \udfff surrogates', 'x'.repeat(55), 'x'.repeat(56), 'x'.repeat(64), 'y'.repeat(1 << 20)];
    for (let i = 0; i < 300; i++) inputs.push(Array.from({ length: i }, (_, k) => String.fromCharCode((k * 7919 + i * 31) % 0xd7ff)).join(''));
    for (const s of inputs) assert.equal(sha256Hex(s), createHash('sha256').update(s).digest('hex'), JSON.stringify(s.slice(0, 40)));
  });

  test('randomHex gives fresh hex of the asked length', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      const h = randomHex(6);
      assert.match(h, /^[0-9a-f]{12}$/);
      seen.add(h);
    }
    assert.equal(seen.size, 1000);
  });
});

describe('a cold run with files, a template and a service', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bp-nocrypto-'));
  after(async () => {
    // The run leaves its service running, as a one-shot run does: it and its cgroup go here.
    const cgroups = await agentCgroups(dir);
    await killCgroups(cgroups);
    await removeCgroups(cgroups);
    rmSync(dir, { recursive: true, force: true });
  });

  test('never loads node:crypto (~5 ms of its start)', () => {
    ensureBuilt();
    const report = join(dir, 'report.cjs');
    writeFileSync(report, `process.on('exit', () => require('fs').writeSync(2, 'LOADED ' + process.moduleLoadList.filter((m) => /crypto/.test(m)).join(',') + '\\n'));\n`);
    const graph = join(dir, 'g.yaml');
    writeFileSync(
      graph,
      [
        'resources:',
        `  - { kind: file, name: ${dir}/www, type: directory }`,
        `  - { kind: file, name: ${dir}/www/index.html, content: "hi\\n" }`,
        `  - { kind: template, name: ${dir}/app.conf, template: "port {{ vars.port }}\\n", vars: { port: 8080 }, notify: ["svc[app]"] }`,
        `  - { kind: svc, name: app, cmd: [sleep, "30"] }`,
        '',
      ].join('\n'),
    );
    const r = spawnSync(process.execPath, ['--require', report, BIN, 'run', '--file', graph, '--converged-timeout', '0', '--state-dir', join(dir, 'state')], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /converged: 4 of 4/);
    assert.match(r.stderr, /^LOADED $/m, 'node:crypto was loaded');
  });
});
